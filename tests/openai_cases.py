"""One case per parameter of the OpenAI request bodies the front serves: every key of the
installed `openai` SDK's CompletionCreateParams (chat and legacy completions) plus the
vLLM-style extras. Honoured: a body patch and what it must change in the router's
request. Unsupported: a value asking for something (a 400 naming `param`) and, where one
exists, a value asking for nothing (accepted). The unit and the integration tests share
these cases; a unit test checks they cover the SDK's keys exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from openai.types import completion_create_params as legacy_params
from openai.types.chat import completion_create_params as chat_params

from modelyard.v1 import common_pb2
from router.openai.translate import Translated

Check = Callable[[Translated], bool]
_NONE = object()


@dataclass(frozen=True)
class Honoured:
    param: str
    patch: dict[str, Any]  # merged into a valid body
    effect: Check | None  # None: accepted, with nothing to show in the request

    @property
    def id(self) -> str:
        return self.param


@dataclass(frozen=True)
class Refused:
    param: str
    value: Any  # asks for something modelyard cannot do
    neutral: Any = field(default=_NONE)  # asks for nothing: accepted
    where: str = ""  # the 400's param, when not `param` itself

    @property
    def id(self) -> str:
        return self.param

    @property
    def has_neutral(self) -> bool:
        return self.neutral is not _NONE


def sdk_keys(module: Any) -> set[str]:
    """The keys of the SDK's CompletionCreateParams (the streaming one adds `stream`)."""
    params = module.CompletionCreateParamsStreaming
    return set(params.__required_keys__ | params.__optional_keys__)


CHAT_SDK_KEYS = sdk_keys(chat_params)
COMPLETION_SDK_KEYS = sdk_keys(legacy_params)


def _sampling(name: Literal["temperature", "seed"], value: float) -> Check:
    """`name` set (optional in the proto: 0 is a value of its own) to `value`."""
    return lambda t: (
        t.request.sampling.HasField(name) and getattr(t.request.sampling, name) == value
    )


def _near(name: str, value: float) -> Check:
    return lambda t: abs(getattr(t.request.sampling, name) - value) < 1e-6


def _session(key: str) -> Check:
    return lambda t: t.request.hints.session_key == key


_GBNF = common_pb2.GRAMMAR_SYNTAX_GBNF


def _format(t: Translated) -> tuple[int, str, str, int]:
    f = t.request.sampling.response_format
    return (f.type, f.regex, f.grammar, f.grammar_syntax)


_SHARED_HONOURED = [
    Honoured("max_tokens", {"max_tokens": 3}, lambda t: t.request.sampling.max_tokens == 3),
    Honoured("temperature", {"temperature": 0.0}, _sampling("temperature", 0.0)),
    Honoured("top_p", {"top_p": 0.5}, _near("top_p", 0.5)),
    Honoured("stop", {"stop": ["\n\n"]}, lambda t: list(t.request.sampling.stop) == ["\n\n"]),
    Honoured("seed", {"seed": 7}, _sampling("seed", 7)),
    Honoured("presence_penalty", {"presence_penalty": 0.5}, _near("presence_penalty", 0.5)),
    Honoured("frequency_penalty", {"frequency_penalty": 0.5}, _near("frequency_penalty", 0.5)),
    Honoured("stream", {"stream": True}, lambda t: t.stream),
    Honoured(
        "stream_options",
        {"stream": True, "stream_options": {"include_usage": True}},
        lambda t: t.include_usage,
    ),
    Honoured("user", {"user": "alice"}, _session("alice")),
    Honoured("top_k", {"top_k": 5}, lambda t: t.request.sampling.top_k == 5),
    Honoured("min_p", {"min_p": 0.25}, _near("min_p", 0.25)),
    Honoured("repetition_penalty", {"repetition_penalty": 1.5}, _near("repetition_penalty", 1.5)),
    Honoured("n", {"n": 2}, lambda t: t.n == 2 and len(t.requests()) == 2),
    Honoured(
        "structured_outputs",
        {"structured_outputs": {"regex": "[0-9]+"}},
        lambda t: _format(t) == (common_pb2.RESPONSE_FORMAT_TYPE_REGEX, "[0-9]+", "", 0),
    ),
    Honoured(
        "guided_regex",
        {"guided_regex": "a|b"},
        lambda t: _format(t) == (common_pb2.RESPONSE_FORMAT_TYPE_REGEX, "a|b", "", 0),
    ),
    Honoured(
        "guided_grammar",
        {"guided_grammar": 'root ::= "x"'},
        lambda t: (
            _format(t) == (common_pb2.RESPONSE_FORMAT_TYPE_GRAMMAR, "", 'root ::= "x"', _GBNF)
        ),
    ),
    Honoured(
        "guided_choice",
        {"guided_choice": ["yes", "no"]},
        lambda t: _format(t) == (common_pb2.RESPONSE_FORMAT_TYPE_REGEX, "yes|no", "", 0),
    ),
    Honoured(
        "guided_json",
        {"guided_json": {"type": "object"}},
        lambda t: t.request.sampling.response_format.json_schema == '{"type": "object"}',
    ),
    Honoured(
        "logit_bias",
        {"logit_bias": {"50": -100}},
        lambda t: dict(t.request.sampling.logit_bias) == {50: -100},
    ),
]

_JSON_SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
_SCHEMA_FORMAT = {"name": "a", "schema": _JSON_SCHEMA}


def _schema_of(t: Translated) -> Any:
    f = t.request.sampling.response_format
    schema_type = common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    return json.loads(f.json_schema) if f.type == schema_type else None


_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

CHAT_HONOURED = [
    Honoured("model", {}, lambda t: bool(t.request.model)),
    Honoured(
        "messages",
        {
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ]
        },
        lambda t: [m.role for m in t.request.messages] == ["system", "user"],
    ),
    Honoured(
        "max_completion_tokens",
        {"max_completion_tokens": 2, "max_tokens": 3},
        lambda t: t.request.sampling.max_tokens == 2,
    ),
    Honoured("safety_identifier", {"safety_identifier": "s-1"}, _session("s-1")),
    Honoured("prompt_cache_key", {"prompt_cache_key": "conv-9"}, _session("conv-9")),
    Honoured(
        "parallel_tool_calls",
        {"parallel_tool_calls": False},
        lambda t: not t.parallel_tool_calls,
    ),
    Honoured(
        "tools",
        {"tools": [_TOOL]},
        lambda t: (
            [x.name for x in t.request.tools] == ["f"]
            and t.request.tool_choice.mode == common_pb2.TOOL_CHOICE_MODE_AUTO
        ),
    ),
    Honoured(
        "tool_choice",
        {"tools": [_TOOL], "tool_choice": {"type": "function", "function": {"name": "f"}}},
        lambda t: t.request.tool_choice.function_name == "f",
    ),
    Honoured("logprobs", {"logprobs": True}, lambda t: t.request.sampling.logprobs),
    Honoured(
        "top_logprobs",
        {"logprobs": True, "top_logprobs": 2},
        lambda t: t.request.sampling.top_logprobs == 2,
    ),
    Honoured(
        "response_format",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": _JSON_SCHEMA},
            }
        },
        lambda t: (
            t.request.sampling.response_format.type == common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
            and json.loads(t.request.sampling.response_format.json_schema) == _JSON_SCHEMA
        ),
    ),
    *_SHARED_HONOURED,
]

COMPLETION_HONOURED = [
    Honoured("model", {}, lambda t: bool(t.request.model)),
    Honoured("prompt", {"prompt": ["Once"]}, lambda t: t.request.prompt == "Once"),
    Honoured(
        "logprobs",
        {"logprobs": 2},
        lambda t: t.request.sampling.logprobs and t.request.sampling.top_logprobs == 2,
    ),
    *_SHARED_HONOURED,
]

_SHARED_REFUSED: list[Refused] = []

CHAT_REFUSED = [
    *_SHARED_REFUSED,
    Refused("functions", [{"name": "f"}], []),
    Refused("function_call", "auto", "none"),
    Refused("audio", {"voice": "alloy", "format": "wav"}),
    Refused("modalities", ["text", "audio"], ["text"]),
    Refused("prediction", {"type": "content", "content": "Hi"}),
    Refused("web_search_options", {}),
    Refused("reasoning_effort", "high", "none"),
    Refused("verbosity", "low"),
    Refused("service_tier", "flex", "auto"),
    Refused("store", True, False),
    Refused("metadata", {"k": "v"}, {}),
    Refused("moderation", {"input": {"mode": "block"}}),
    Refused("prompt_cache_retention", "24h", "in_memory"),
    Refused("prompt_cache_options", {"ttl": "24h"}, {}),
]

COMPLETION_REFUSED = [
    *_SHARED_REFUSED,
    Refused("best_of", 2, 1),
    Refused("echo", True, False),
    Refused("suffix", " end.", ""),
]

EXTRA = {
    "top_k",
    "min_p",
    "repetition_penalty",
    "structured_outputs",
    "guided_regex",
    "guided_grammar",
    "guided_choice",
    "guided_json",
}
