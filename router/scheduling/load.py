"""A worker's load in tokens, as every plugin that weighs load counts it."""

from __future__ import annotations

from router.scheduling.types import Candidate

# Tokens one open stream of this router is worth when the pushed status lags behind.
IN_FLIGHT_TOKENS = 256


def load_of(c: Candidate) -> float:
    """Prompt tokens waiting at the worker, plus a stream's worth per open stream.

    Waiting means queued there (its pushed status: every router's requests, lagging)
    or sent by this router and not at its first token yet (fresh; admitted requests
    leave the worker's queue while they are still reading their prompt). One router
    feeding a worker counts the same requests in both, so the larger, not the sum (as
    `predict.queue_wait_ms`). Without the second, a worker reading 4,000 uncached
    prompt tokens looked as loaded as one decoding short replies: the prefix bench's
    load-only policy had its slowest turns there (TTFT p95 1.6x round-robin's)."""
    return max(c.queued_tokens, c.prefilling_tokens) + IN_FLIGHT_TOKENS * c.in_flight
