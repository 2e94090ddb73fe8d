"""A worker's load in tokens, as every plugin that weighs load counts it."""

from __future__ import annotations

from router.scheduling.types import Candidate

# Tokens one open stream of this router is worth when the pushed status lags behind.
IN_FLIGHT_TOKENS = 256


def load_of(c: Candidate) -> float:
    return c.queued_tokens + IN_FLIGHT_TOKENS * c.in_flight
