"""What every engine shares: the not-loaded error and the prompt checks.

Admission (queue bounds, priorities, slots) is the worker's (`worker.admission`), not
an engine's: an engine runs what it is given.
"""

from __future__ import annotations

from collections.abc import Sized

from modelyard.errors import InvalidArgument, Unavailable


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
