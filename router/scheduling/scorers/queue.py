"""Fewer queued tokens on the worker scores higher (the LOAD objective's signal)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.scheduling.load import load_of
from router.scheduling.types import Candidate, CycleState, Request


@dataclass(frozen=True)
class QueueScorer:
    name: str = "queue"
    # Queued tokens that halve the score: keeps scores comparable across pools.
    half_at_tokens: float = 2048.0

    def score(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> dict[Candidate, float]:
        return {c: self.half_at_tokens / (self.half_at_tokens + load_of(c)) for c in cands}
