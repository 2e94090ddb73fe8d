"""What the worker and vLLM benches share: interleaved repetitions reported as min / median /
max, and the prompt that cannot stop early."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

# A counting prompt: SmolLM2 keeps counting for hundreds of tokens, so every stream
# produces exactly max_tokens and no ratio is an artifact of a stream ending early.
COUNTING = "Count from 1 to 1000: 1, 2, 3, 4, 5,"


def counting_prompt(i: int) -> str:
    """Distinct counting prompts (no shared prefix beyond the instruction)."""
    start = 10 * i + 1
    return f"Count from {start} to 5000: " + ", ".join(str(start + k) for k in range(5)) + ","


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """`min / median / max` of the repetitions."""
    if not values:
        return "n/a"
    trio = (min(values), statistics.median(values), max(values))
    return " / ".join(fmt.format(v) for v in trio)
