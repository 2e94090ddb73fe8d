"""What every engine shares: the not-loaded error and the prompt checks.

Admission (queue bounds, priorities, slots) is the worker's (`worker.admission`), not
an engine's: an engine runs what it is given.
"""

from __future__ import annotations

from collections.abc import Sized

from modelyard.errors import InvalidArgument, Unavailable
from worker.engines.base import EngineRequest


class EngineNotLoaded(Unavailable):
    """A request reached an engine whose model was unloaded meanwhile: retry elsewhere."""

    def __init__(self, engine_name: str) -> None:
        super().__init__(
            f"no model loaded in this {engine_name} engine (it was unloaded); retry",
            reason="ENGINE_NOT_LOADED",
            retry_after_s=1.0,
        )


def check_prompt(prompt_tokens: Sized, context_length: int, key: str) -> None:
    """INVALID_ARGUMENT for an empty prompt or one that fills the context window."""
    if not len(prompt_tokens):
        raise InvalidArgument.for_field("prompt", "the prompt has no tokens")
    if len(prompt_tokens) >= context_length:
        raise InvalidArgument.for_field(
            "prompt",
            f"the prompt has {len(prompt_tokens)} tokens but {key} is loaded "
            f"with a context window of {context_length} tokens",
        )


def check_logit_bias(req: EngineRequest, n_vocab: int) -> None:
    """INVALID_ARGUMENT for a biased token id outside the model's vocabulary."""
    bad = sorted(t for t in req.logit_bias if not 0 <= t < n_vocab)
    if bad:
        raise InvalidArgument.for_field(
            f"sampling.logit_bias[{bad[0]}]", f"token ids must lie in [0, {n_vocab})"
        )


def refuse_unsupported(
    req: EngineRequest,
    engine_name: str,
    *,
    formats: bool = False,
    logit_bias: bool = False,
    tools: bool = False,
) -> None:
    """INVALID_ARGUMENT for what this engine cannot do: a field is never ignored silently."""
    if (req.tools is not None or any(m.tool_calls for m in req.messages)) and not tools:
        raise InvalidArgument.for_field("tools", f"engine {engine_name} does not support tools")
    if req.tools is not None and req.output_format is not None and not formats:
        raise InvalidArgument.for_field(
            "tool_choice",
            f"engine {engine_name} cannot force a tool call (constrained decoding); use auto",
        )
    if req.output_format is not None and not formats:
        raise InvalidArgument.for_field(
            "sampling.response_format",
            f"engine {engine_name} cannot constrain its output (constrained decoding: "
            "engines llama_cpp, vllm and transformers)",
        )
    if req.logit_bias and not logit_bias:
        raise InvalidArgument.for_field(
            "sampling.logit_bias", f"engine {engine_name} does not support logit bias"
        )
