"""Predicted time to first token of a candidate, shared by the latency filter and scorer."""

from __future__ import annotations

from collections.abc import Sequence

from router.scheduling.types import Candidate, CycleState

# Before any measurement: an optimistic prior, so unmeasured workers get tried.
PRIOR_TTFT_MS = 200.0
PRIOR_INTER_TOKEN_MS = 30.0
# Load-time estimate for a model that is not in memory: fixed setup plus reading
# its weights at ~1 GB/s (an SSD or page-cached artifact).
LOAD_BASE_MS = 500.0
LOAD_MS_PER_GB = 1000.0
_GB = 1 << 30
_KEY = "predict.ttft_ms"


def swap_ms(cand: Candidate) -> float:
    if not cand.needs_load:
        return 0.0
    return LOAD_BASE_MS + LOAD_MS_PER_GB * cand.model.resources.memory_bytes / _GB


def predicted_ttft_ms(cand: Candidate, cands: Sequence[Candidate], cycle: CycleState) -> float:
    """EWMA TTFT (or the model's mean over measured workers, or a prior), plus the
    load time of a cold model, plus one inter-token gap per stream this router
    already has open on the worker (their decode steps share its compute)."""
    cache = cycle.data.setdefault(_KEY, {})
    assert isinstance(cache, dict)
    if cand in cache:
        return float(cache[cand])
    base = cand.ttft_ms
    if base is None:
        known = [
            c.ttft_ms for c in cands if c.ttft_ms is not None and c.model_key == cand.model_key
        ]
        base = sum(known) / len(known) if known else PRIOR_TTFT_MS
    itl = cand.inter_token_ms if cand.inter_token_ms is not None else PRIOR_INTER_TOKEN_MS
    value = base + swap_ms(cand) + cand.in_flight * itl
    cache[cand] = value
    return value
