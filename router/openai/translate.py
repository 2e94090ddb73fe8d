"""OpenAI request bodies -> the router's GenerateRequest (and nothing else).

Only what modelyard can honour is accepted: n=1, text content, no logprobs, no tools,
text responses. Anything else is a 400 naming the parameter, rather than an answer that
silently ignores it; so is a value of the wrong JSON type or out of range
(router/openai/fields.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelyard.v1 import common_pb2, router_pb2
from router.openai.errors import invalid
from router.openai.fields import (
    INT32_MAX,
    UINT64_MAX,
    boolean,
    check_unsupported,
    integer,
    number,
    obj,
    optional_string,
    string,
)

_ROLES = {"system", "user", "assistant", "tool", "developer"}


def chat_request(body: Mapping[str, Any]) -> router_pb2.GenerateRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array", "messages")
    request = _common(body)
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise invalid(f"messages[{i}] must be an object", f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            shown = repr(role) if len(repr(role)) <= 40 else repr(role)[:37] + "..."
            raise invalid(
                f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}, got {shown}",
                f"messages[{i}].role",
            )
        request.messages.append(
            common_pb2.ChatMessage(
                # Newer OpenAI clients send "developer" where older ones send "system".
                role="system" if role == "developer" else role,
                content=_content(message.get("content"), i),
                name=optional_string(message, "name", f"messages[{i}].name") or "",
            )
        )
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    _set_max_tokens(request, max_tokens, "max_completion_tokens")
    return request


def completion_request(body: Mapping[str, Any]) -> router_pb2.GenerateRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise invalid("'prompt' must be a string (one prompt per request)", "prompt")
    if boolean(body, "echo"):
        raise invalid("'echo' is not supported", "echo")
    if optional_string(body, "suffix"):
        raise invalid("'suffix' is not supported", "suffix")
    request = _common(body)
    request.prompt = string(prompt, "prompt")
    # OpenAI's legacy completions default to 16 tokens.
    _set_max_tokens(request, body.get("max_tokens", 16), "max_tokens")
    return request


def wants_stream(body: Mapping[str, Any]) -> bool:
    return boolean(body, "stream")


def include_usage(body: Mapping[str, Any]) -> bool:
    return boolean(obj(body, "stream_options"), "include_usage", "stream_options.include_usage")


def _common(body: Mapping[str, Any]) -> router_pb2.GenerateRequest:
    model = body.get("model")
    if model is None:
        raise invalid("'model' is required", "model")
    wants_stream(body)  # its type is checked before any work, as include_usage's
    include_usage(body)
    n = body.get("n")
    if n is not None and integer(n, "n", 1, INT32_MAX) != 1:
        raise invalid("only n=1 is supported", "n")
    if boolean(body, "logprobs") or body.get("top_logprobs"):
        raise invalid("logprobs are not supported", "logprobs")
    check_unsupported(body)
    request = router_pb2.GenerateRequest(model=string(model, "model"))
    _set_sampling(request.sampling, body)
    user = optional_string(body, "user")
    if user:
        request.hints.session_key = user  # keeps a user on one A/B arm
    return request


def _set_sampling(sampling: common_pb2.SamplingParams, body: Mapping[str, Any]) -> None:
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None:
            setattr(sampling, name, number(value, name))
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list):
            raise invalid("'stop' must be a string or an array of strings", "stop")
        sampling.stop.extend(string(s, "stop") for s in stop)
    seed = body.get("seed")
    if seed is not None:
        sampling.seed = integer(seed, "seed", 0, UINT64_MAX)


def _set_max_tokens(request: router_pb2.GenerateRequest, value: Any, param: str) -> None:
    if value is None:
        return
    request.sampling.max_tokens = integer(value, param, 1, INT32_MAX)


def _content(content: Any, i: int) -> str:
    if isinstance(content, str):
        return string(content, f"messages[{i}].content")
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise invalid("only text content parts are supported", f"messages[{i}].content")
            texts.append(optional_string(part, "text", f"messages[{i}].content") or "")
        return "".join(texts)
    raise invalid(f"messages[{i}].content must be a string or an array", f"messages[{i}].content")
