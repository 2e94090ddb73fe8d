"""POST /v1/embeddings: OpenAI's body (every key of the SDK's EmbeddingCreateParams) to an
EmbedRequest, and the EmbedResponse back in OpenAI's shape.

`input` is one string or an array of strings; token-id arrays are a 400 (the router
embeds text). `encoding_format` "base64" (the SDK's default when it can decode it) is
each vector's little-endian float32 bytes; `dimensions` cuts the vectors (then
normalized again); `user` is the session key, as for chat.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from modelyard.refs import model_key
from modelyard.v1 import router_pb2
from router.openai.bodies import Positive32, Text, _first_fault, _Strict
from router.openai.errors import invalid


def _texts(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and any(isinstance(v, (int, list)) for v in value):
        raise PydanticCustomError(
            "token_ids",
            "must be a string or an array of strings: token-id arrays are not supported",
        )
    return value


class EmbeddingBody(_Strict):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    model: Text
    input: Annotated[list[Text], BeforeValidator(_texts), Field(min_length=1)]
    dimensions: Positive32 | None = None
    encoding_format: Literal["float", "base64"] | None = None
    user: Text | None = None


@dataclass(frozen=True)
class EmbeddingCall:
    request: router_pb2.EmbedRequest
    base64: bool
    ignored: tuple[str, ...]


def embedding_request(body: dict[str, Any], *, ignore_unknown: bool = False) -> EmbeddingCall:
    try:
        parsed = EmbeddingBody.model_validate(body)
    except ValidationError as err:  # the 400 of its first fault, named as for chat
        raise _first_fault(err) from None
    unknown = list(parsed.model_extra or {})
    if unknown and not ignore_unknown:
        raise invalid(f"unknown parameter '{unknown[0]}'", unknown[0])
    request = router_pb2.EmbedRequest(model=parsed.model, inputs=parsed.input)
    if parsed.dimensions is not None:
        request.params.dimensions = parsed.dimensions
    if parsed.user:
        request.hints.session_key = parsed.user
    return EmbeddingCall(request, parsed.encoding_format == "base64", tuple(unknown))


def embedding_response(reply: router_pb2.EmbedResponse, *, as_base64: bool) -> dict[str, Any]:
    started = reply.started
    data: list[dict[str, Any]] = []
    for e in reply.embeddings:
        values: Any = list(e.values)
        if as_base64:
            packed = struct.pack(f"<{len(e.values)}f", *e.values)
            values = base64.b64encode(packed).decode("ascii")
        data.append({"object": "embedding", "index": e.index, "embedding": values})
    tokens = reply.usage.input_tokens
    return {
        "object": "list",
        "data": data,
        "model": model_key(started.model, started.version) if started.version else started.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
