"""How long an output may run, and how long one is expected to run, when the request
leaves max_tokens unset (SamplingParams.max_tokens = 0).

Such a request runs until the context is full or it meets the lowest ceiling that
applies (route, API key, worker). Planning for it at that bound would make one such
request look like a whole context's work to the queue budget, the KV reservation and
the queued-token figures that drive routing and autoscaling; they plan for the expected
output instead: a running mean of the lengths such outputs had on the same model,
seeded with `DEFAULT_EXPECTED_OUTPUT`. The KV reservation grows past it as tokens come.
"""

from __future__ import annotations

import threading

DEFAULT_EXPECTED_OUTPUT = 256  # tokens: the seed, before a model has finished anything
# Weight of the newest observation: about the last ten outputs count, so the estimate
# follows a change of traffic within a few dozen requests without jumping on one.
EWMA_WEIGHT = 0.1
MAX_MODELS = 1024  # models tracked; the oldest is forgotten beyond (memory stays bounded)


def lowest_ceiling(*ceilings: int) -> int:
    """The lowest of the ceilings that are set (> 0); 0 when none is."""
    return min((c for c in ceilings if c > 0), default=0)


class OutputEstimate:
    """Per model, the exponentially weighted mean output length of requests that left
    max_tokens unset. Thread-safe: read when a request arrives, fed when one finishes."""

    def __init__(self, seed: int = DEFAULT_EXPECTED_OUTPUT, weight: float = EWMA_WEIGHT) -> None:
        if seed < 1:
            raise ValueError(f"the seed must be at least 1 token, got {seed}")
        if not 0 < weight <= 1:
            raise ValueError(f"the weight must be in (0, 1], got {weight}")
        self.seed = seed
        self._weight = weight
        self._means: dict[str, float] = {}
        self._lock = threading.Lock()

    def expected(self, model: str, cap: int = 0) -> int:
        """Tokens the model's next unbounded output is expected to take, at least 1 and
        at most `cap` (the request's ceiling or the room its context leaves) when > 0."""
        with self._lock:
            mean = self._means.get(model, float(self.seed))
        tokens = max(1, round(mean))
        return min(tokens, cap) if cap > 0 else tokens

    def observe(self, model: str, output_tokens: int) -> None:
        """A finished unbounded output of `output_tokens` tokens on `model`."""
        with self._lock:
            mean = self._means.pop(model, float(self.seed))  # re-inserted: newest last
            self._means[model] = mean + self._weight * (max(0, output_tokens) - mean)
            while len(self._means) > MAX_MODELS:
                del self._means[next(iter(self._means))]
