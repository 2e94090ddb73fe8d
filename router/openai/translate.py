"""OpenAI request bodies -> the router's GenerateRequest (and nothing else).

The body is parsed by the pydantic models of router/openai/bodies.py; each parameter is
then honoured or refused as router/openai/params.py decides. Nothing is dropped silently:
an unsupported parameter sent with a value that asks for something is a 400 naming it,
and so is an unknown parameter, unless the router is set to ignore those (then they are
listed in the response's `x-modelyard-ignored-params` header).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel

from modelyard.v1 import common_pb2, router_pb2
from router.openai.bodies import (
    ChatBody,
    CompletionBody,
    Message,
    ResponseFormat,
    param_of,
    parse,
)
from router.openai.errors import invalid
from router.openai.params import CHAT_UNSUPPORTED, COMPLETION_UNSUPPORTED, check_unsupported
from router.openai.structured import extra_format, format_param
from router.openai.tools import add_tools, message_calls

# OpenAI's legacy completions default to 16 tokens.
COMPLETION_MAX_TOKENS = 16


@dataclass(frozen=True)
class Translated:
    request: router_pb2.GenerateRequest
    stream: bool
    include_usage: bool
    ignored: tuple[str, ...] = ()  # unknown parameters, ignored by the router's setting
    n: int = 1  # choices: n generations of the one request, run concurrently
    parallel_tool_calls: bool = True  # false: each choice keeps its first tool call only
    # The client's parameter the response format came from when it was not
    # `response_format` ("structured_outputs.regex", "guided_grammar"): the engine's
    # refusal of a pattern or grammar points there.
    format_param: str | None = None

    def requests(self) -> list[router_pb2.GenerateRequest]:
        """One request per choice; with a seed, choice i samples with seed + i (the same
        seed would make n equal texts)."""
        out = []
        for i in range(self.n):
            request = router_pb2.GenerateRequest()
            request.CopyFrom(self.request)
            if i and request.sampling.HasField("seed"):
                request.sampling.seed = (request.sampling.seed + i) % 2**64
            out.append(request)
        return out


def chat_request(body: dict[str, Any], *, ignore_unknown: bool = False) -> Translated:
    parsed = parse(ChatBody, body)
    ignored = _unknown(parsed, ignore_unknown)
    check_unsupported(parsed.model_dump(exclude_unset=True), CHAT_UNSUPPORTED)
    request = _common_request(parsed)
    request.messages.extend(_message(m, i) for i, m in enumerate(parsed.messages))
    for i, tool in enumerate(parsed.tools or ()):
        _refuse_extras(tool, f"tools[{i}]")
        _refuse_extras(tool.function, f"tools[{i}].function")
    add_tools(request, parsed)
    if parsed.top_logprobs and not parsed.logprobs:
        raise invalid("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    request.sampling.logprobs = bool(parsed.logprobs)
    request.sampling.top_logprobs = parsed.top_logprobs or 0
    if parsed.response_format is not None and parsed.response_format.type != "text":
        if request.sampling.HasField("response_format"):
            raise invalid(
                "'response_format' cannot be combined with a regex or grammar constraint: "
                "one constraint per request",
                "response_format",
            )
        request.sampling.response_format.CopyFrom(_response_format(parsed.response_format))
    max_tokens = parsed.max_completion_tokens or parsed.max_tokens
    # Omitted: 0, to the end of the context or the route's / API key's ceiling (as OpenAI).
    if max_tokens is not None:
        request.sampling.max_tokens = max_tokens
    # `user`, then OpenAI's newer per-user keys: one A/B arm and one prefix per caller.
    session = parsed.user or parsed.safety_identifier or parsed.prompt_cache_key
    if session:
        request.hints.session_key = session
    translated = _translated(request, parsed, ignored)
    return replace(translated, parallel_tool_calls=parsed.parallel_tool_calls is not False)


def completion_request(body: dict[str, Any], *, ignore_unknown: bool = False) -> Translated:
    parsed = parse(CompletionBody, body)
    ignored = _unknown(parsed, ignore_unknown)
    check_unsupported(parsed.model_dump(exclude_unset=True), COMPLETION_UNSUPPORTED)
    request = _common_request(parsed)
    request.prompt = parsed.prompt
    if parsed.logprobs is not None:  # legacy: the number of alternatives per token
        request.sampling.logprobs = True
        request.sampling.top_logprobs = parsed.logprobs
    request.sampling.max_tokens = (
        COMPLETION_MAX_TOKENS if parsed.max_tokens is None else parsed.max_tokens
    )
    if parsed.user:
        request.hints.session_key = parsed.user
    return _translated(request, parsed, ignored)


def _translated(
    request: router_pb2.GenerateRequest, parsed: ChatBody | CompletionBody, ignored: list[str]
) -> Translated:
    options = parsed.stream_options
    if options is not None:
        _refuse_extras(options, "stream_options")
        if options.include_obfuscation:
            raise invalid(
                "'stream_options.include_obfuscation' is not supported yet",
                "stream_options.include_obfuscation",
            )
    translated = Translated(
        request,
        stream=bool(parsed.stream),
        include_usage=bool(options and options.include_usage),
        ignored=tuple(ignored),
        format_param=format_param(parsed),
    )
    return replace(translated, n=parsed.n) if parsed.n else translated


def _unknown(parsed: BaseModel, ignore: bool) -> list[str]:
    unknown = list(parsed.model_extra or {})
    if unknown and not ignore:
        raise invalid(f"unknown parameter '{unknown[0]}'", unknown[0])
    return unknown


def _common_request(parsed: ChatBody | CompletionBody) -> router_pb2.GenerateRequest:
    request = router_pb2.GenerateRequest(model=parsed.model)
    sampling = request.sampling
    for name in (
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "min_p",
        "repetition_penalty",
    ):
        value = getattr(parsed, name)
        if value is not None:
            setattr(sampling, name, value)
    if parsed.top_k is not None:
        sampling.top_k = max(parsed.top_k, 0)
    if parsed.stop is not None:
        sampling.stop.extend(parsed.stop)
    if parsed.seed is not None:
        sampling.seed = parsed.seed
    for key, bias in (parsed.logit_bias or {}).items():
        if not key.isdigit() or int(key) >= 2**32:  # the router checks the bias itself
            raise invalid(f"'logit_bias' keys must be token ids, got {key[:32]!r}", "logit_bias")
        sampling.logit_bias[int(key)] = bias
    constraint = extra_format(parsed)
    if constraint is not None:
        sampling.response_format.CopyFrom(constraint)
    return request


def _response_format(f: ResponseFormat) -> common_pb2.ResponseFormat:
    if f.type == "json_object":
        return common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    if f.json_schema is None or f.json_schema.schema_ is None:
        where = "response_format.json_schema" + (".schema" if f.json_schema else "")
        raise invalid(f"'{where}' is required with type 'json_schema'", where)
    return common_pb2.ResponseFormat(
        type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
        json_schema=json.dumps(f.json_schema.schema_, separators=(",", ":")),
    )


def _message(message: Message, i: int) -> common_pb2.ChatMessage:
    where = f"messages[{i}]"
    if message.role == "function":
        raise invalid(f"'{where}.role' 'function' is not supported yet", f"{where}.role")
    _refuse_extras(message, where)
    texts = []
    for j, part in enumerate(message.content or ()):
        _refuse_extras(part, f"{where}.content[{j}]")
        texts.append(part.text)
    for j, call in enumerate(message.tool_calls or ()):
        _refuse_extras(call, f"{where}.tool_calls[{j}]")
        _refuse_extras(call.function, f"{where}.tool_calls[{j}].function")
    return common_pb2.ChatMessage(
        # Newer OpenAI clients send "developer" where older ones send "system".
        role="system" if message.role == "developer" else message.role,
        content="".join(texts),
        name=message.name or "",
        tool_calls=message_calls(message),
        tool_call_id=message.tool_call_id or "",
    )


def _refuse_extras(model: BaseModel, where: str) -> None:
    """Keys of a nested object the front does not model (tool_calls, tool_call_id,
    cache_control, ...): a 400 when they ask for something, never dropped silently."""
    for key, value in (model.model_extra or {}).items():
        if value is not None:
            param = param_of((where, key)) if where else key
            raise invalid(f"'{param}' is not supported yet", param)
