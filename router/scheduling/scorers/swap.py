"""Prefer a model already in memory; place a cold one on the worker with the most free
memory budget (the worker loads it on demand)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelyard.v1 import worker_pb2
from router.scheduling.types import Candidate, CycleState, Request

WARM = 1.0
LOADING = 0.7
# A cold model scores at most this, scaled by the worker's free fraction of budget.
COLD_MAX = 0.5


@dataclass(frozen=True)
class SwapScorer:
    name: str = "swap"

    def score(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> dict[Candidate, float]:
        return {c: _score(c) for c in cands}


def _score(c: Candidate) -> float:
    if c.residency == worker_pb2.RESIDENCY_STATE_WARM:
        return WARM
    if c.residency == worker_pb2.RESIDENCY_STATE_LOADING:
        return LOADING
    free = c.free_memory_bytes
    if free is None:
        return COLD_MAX / 2  # budget unknown: middling
    return COLD_MAX * free / c.memory_budget_bytes
