"""Drop workers whose circuit breaker refuses requests (open, or half-open with its
probes already out)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.scheduling.types import Candidate, CycleState, Request


@dataclass(frozen=True)
class BreakerFilter:
    name: str = "breaker"

    def filter(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> Sequence[Candidate]:
        for c in cands:
            if not c.breaker_allows:
                cycle.reject(self.name, c, "circuit breaker open")
        return [c for c in cands if c.breaker_allows]
