"""What the front does with each parameter of OpenAI's request bodies: every key of the
`openai` SDK's CompletionCreateParams (chat and legacy completions) is either honoured
(it reaches the router's GenerateRequest) or unsupported (a 400 naming it, unless its
value asks for nothing, such as best_of=1 or store=false). A unit test compares these
tables with the installed SDK's keys, so a new SDK key cannot pass without a decision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from router.openai.errors import invalid


@dataclass(frozen=True)
class Unsupported:
    """A parameter modelyard cannot honour yet; `neutral` tells the values that ask for
    nothing (accepted, since honouring them is doing nothing)."""

    neutral: Callable[[Any], bool]
    detail: str = ""
    param: str | None = None  # where the 400 points, when not at the parameter itself

    def message(self, name: str) -> str:
        return f"'{name}' is not supported yet" + (f" ({self.detail})" if self.detail else "")


def _never(_: Any) -> bool:
    return False


def _empty(value: Any) -> bool:
    return not value  # [], {}, "" and false ask for nothing


def _one_of(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: value in allowed


# Both endpoints: the sampling parameters and the session key.
_SHARED_HONOURED = frozenset(
    {
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "stream",
        "stream_options",  # include_usage; include_obfuscation=false
        "user",  # the session key: one A/B arm and prefix affinity per user
        "n",  # 1..8 choices, each a generation of its own, run concurrently
        "logit_bias",  # token id -> [-100, 100]
        "logprobs",  # chat: true/false; legacy: the number of alternatives (0..20)
    }
)

CHAT_HONOURED = _SHARED_HONOURED | {
    "messages",
    "max_completion_tokens",  # the newer name of max_tokens; wins when both are sent
    "safety_identifier",  # OpenAI's successor of `user`: the session key when user is absent
    "prompt_cache_key",  # a cache-routing key: the session key when neither is sent
    "tools",  # functions the model may call (router/openai/tools.py)
    "tool_choice",  # "auto", "none", "required" or {"type": "function", ...}
    "parallel_tool_calls",  # false: at most one call per turn
    "top_logprobs",
    "response_format",  # text, json_object, json_schema: constrained decoding in the engine
}
COMPLETION_HONOURED = _SHARED_HONOURED | {"prompt"}

_FUNCTIONS = "deprecated by OpenAI: use 'tools' and 'tool_choice'"
_SHARED_UNSUPPORTED: Mapping[str, Unsupported] = {}

CHAT_UNSUPPORTED: Mapping[str, Unsupported] = {
    **_SHARED_UNSUPPORTED,
    "functions": Unsupported(_empty, _FUNCTIONS),
    "function_call": Unsupported(_one_of("none"), _FUNCTIONS),
    "audio": Unsupported(_never, "text output only"),
    "modalities": Unsupported(_one_of(["text"]), "text output only"),
    "prediction": Unsupported(_never),
    "web_search_options": Unsupported(_never),
    "reasoning_effort": Unsupported(_one_of("none")),
    "verbosity": Unsupported(_never),
    "service_tier": Unsupported(_one_of("auto", "default"), "only 'auto' or 'default'"),
    "store": Unsupported(_one_of(False), "completions are not stored"),
    "metadata": Unsupported(_empty, "completions are not stored"),
    "moderation": Unsupported(_never),
    # The workers' prefix cache lives in memory only.
    "prompt_cache_retention": Unsupported(_one_of("in_memory"), "only 'in_memory'"),
    "prompt_cache_options": Unsupported(_empty),
}

COMPLETION_UNSUPPORTED: Mapping[str, Unsupported] = {
    **_SHARED_UNSUPPORTED,
    "best_of": Unsupported(_one_of(1), "only best_of=1"),
    "echo": Unsupported(_one_of(False)),
    "suffix": Unsupported(_empty),
}

# Not OpenAI's: vLLM-style extra body parameters the router's SamplingParams hold
# (`extra_body={"top_k": 40}` in the SDK).
# Constrained decoding the vLLM way: `structured_outputs` ({"regex": ...}, {"grammar": ...},
# {"choice": [...]} or {"json": schema}), or its older names `guided_*`.
EXTRA = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "structured_outputs",
        "guided_regex",
        "guided_grammar",
        "guided_choice",
        "guided_json",
    }
)


def check_unsupported(values: Mapping[str, Any], table: Mapping[str, Unsupported]) -> None:
    """Raise the 400 of the first unsupported parameter sent with a value asking for
    something (`values`: the parameters the client sent, parsed)."""
    for name, rule in table.items():
        value = values.get(name)
        if value is not None and not rule.neutral(value):
            raise invalid(rule.message(name), rule.param or name)
