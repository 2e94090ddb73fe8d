"""Which requests the response cache may answer, and the key that names each one.

The key is the sha256 of a canonical encoding of everything that decides the output: the
resolved model version (`name@version`, never a bare name, so a new version never meets
an old entry), the prompt or messages (tool calls and results included), the tools and
the tool choice, every sampling field with its default filled in
(an unset field and its default are one key), and the API key's name when the route keeps
each key's entries apart.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from modelyard.refs import key_of
from modelyard.v1 import common_pb2, model_pb2, router_pb2

# Bumped whenever the encoding below or the stored entry's shape changes: old entries
# (in a shared store, written by older routers) then simply stop matching.
KEY_SCHEME = "modelyard.response-cache.v3"


def cacheable(sampling: common_pb2.SamplingParams) -> bool:
    """Deterministic requests only: greedy (temperature 0) or a fixed seed. A sampled
    request without a seed is meant to differ each time, so it is never cached."""
    greedy = sampling.HasField("temperature") and sampling.temperature == 0
    return greedy or sampling.HasField("seed")


def normalized_sampling(s: common_pb2.SamplingParams, output_ceiling: int = 0) -> dict[str, Any]:
    """Every field, defaults made explicit (see SamplingParams in common.proto). An unset
    max_tokens runs to the context or to the ceiling the router resolved (`output_ceiling`):
    the ceiling is part of the key then, and only then."""
    fmt = s.response_format.type or common_pb2.RESPONSE_FORMAT_TYPE_TEXT
    return {
        "max_tokens": s.max_tokens,
        "output_ceiling": 0 if s.max_tokens else output_ceiling,
        "temperature": s.temperature if s.HasField("temperature") else 1.0,
        "top_p": s.top_p if s.HasField("top_p") else 1.0,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "repetition_penalty": s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
        "stop": sorted(set(s.stop)),  # a set: order and repeats change nothing
        "seed": s.seed if s.HasField("seed") else None,
        "response_format": [
            fmt,
            s.response_format.json_schema,
            s.response_format.regex,
            s.response_format.grammar,
            s.response_format.grammar_syntax,
        ],
        "logprobs": s.logprobs,
        "top_logprobs": s.top_logprobs if s.logprobs else 0,
        "logit_bias": sorted(s.logit_bias.items()),
    }


def _message(m: common_pb2.ChatMessage) -> list[Any]:
    calls = [[c.id, c.name, c.arguments] for c in m.tool_calls]
    return [m.role, m.content, m.name, calls, m.tool_call_id]


def _choice(request: router_pb2.GenerateRequest) -> list[Any]:
    """Unspecified is AUTO with tools, NONE without (see ToolChoiceMode): one key each."""
    mode = request.tool_choice.mode
    if mode == common_pb2.TOOL_CHOICE_MODE_UNSPECIFIED:
        mode = (
            common_pb2.TOOL_CHOICE_MODE_AUTO if request.tools else common_pb2.TOOL_CHOICE_MODE_NONE
        )
    return [mode, request.tool_choice.function_name]


def cache_key(
    request: router_pb2.GenerateRequest,
    model: model_pb2.Model,
    *,
    client: str = "",
    output_ceiling: int = 0,
) -> str:
    """The hex sha256 naming this request's answer from `model`. `client` is the API
    key's name when the route keeps keys apart, else ""; `output_ceiling` the route's and
    key's ceiling on an output without max_tokens."""
    canonical = {
        "scheme": KEY_SCHEME,
        "model": key_of(model),
        "prompt": request.prompt,
        "messages": [_message(m) for m in request.messages],
        "tools": [
            [t.name, t.description, t.parameters_json_schema, t.strict] for t in request.tools
        ],
        "tool_choice": _choice(request),
        "sampling": normalized_sampling(request.sampling, output_ceiling),
        "client": client,
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()
