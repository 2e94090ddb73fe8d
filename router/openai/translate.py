"""OpenAI request bodies -> the router's GenerateRequest (and nothing else).

Only what modelyard can honour is accepted: n=1, text content, no logprobs. Anything
else is a 400 naming the parameter, rather than an answer that silently ignores it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelyard.v1 import common_pb2, router_pb2
from router.openai.errors import invalid

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
        if role not in _ROLES:
            raise invalid(f"messages[{i}].role {role!r} is not supported", f"messages[{i}].role")
        request.messages.append(
            common_pb2.ChatMessage(
                # Newer OpenAI clients send "developer" where older ones send "system".
                role="system" if role == "developer" else str(role),
                content=_content(message.get("content"), i),
                name=str(message.get("name") or ""),
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
    if body.get("echo"):
        raise invalid("'echo' is not supported", "echo")
    if body.get("suffix"):
        raise invalid("'suffix' is not supported", "suffix")
    request = _common(body)
    request.prompt = prompt
    # OpenAI's legacy completions default to 16 tokens.
    _set_max_tokens(request, body.get("max_tokens", 16), "max_tokens")
    return request


def wants_stream(body: Mapping[str, Any]) -> bool:
    return bool(body.get("stream"))


def include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options") or {}
    return isinstance(options, Mapping) and bool(options.get("include_usage"))


def _common(body: Mapping[str, Any]) -> router_pb2.GenerateRequest:
    model = body.get("model")
    if not isinstance(model, str):
        raise invalid("'model' is required", "model")
    if body.get("n", 1) not in (1, None):
        raise invalid("only n=1 is supported", "n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise invalid("logprobs are not supported", "logprobs")
    request = router_pb2.GenerateRequest(model=model)
    _set_sampling(request.sampling, body)
    user = body.get("user")
    if isinstance(user, str):
        request.hints.session_key = user  # keeps a user on one A/B arm
    return request


def _set_sampling(sampling: common_pb2.SamplingParams, body: Mapping[str, Any]) -> None:
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise invalid(f"'{name}' must be a number", name)
        setattr(sampling, name, float(value))
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise invalid("'stop' must be a string or an array of strings", "stop")
        sampling.stop.extend(stop)
    seed = body.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise invalid("'seed' must be a non-negative integer", "seed")
        sampling.seed = seed


def _set_max_tokens(request: router_pb2.GenerateRequest, value: Any, param: str) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(f"'{param}' must be a positive integer", param)
    request.sampling.max_tokens = value


def _content(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise invalid("only text content parts are supported", f"messages[{i}].content")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise invalid(f"messages[{i}].content must be a string or an array", f"messages[{i}].content")
