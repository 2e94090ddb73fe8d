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
        kept: list[Candidate] = []
        for c in cands:
            if c.breaker_allows:
                kept.append(c)
            else:
                cycle.reject(self.name, c, "circuit breaker open")
        return kept
