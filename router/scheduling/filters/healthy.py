"""Drop workers that are not streaming their status (unreachable or restarting).

Fails open: when no candidate is healthy (the router just started, or every status
stream lags) all are kept, and the connect timeout bounds what a dead one costs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.scheduling.types import Candidate, CycleState, Request


@dataclass(frozen=True)
class HealthyFilter:
    name: str = "healthy"

    def filter(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> Sequence[Candidate]:
        kept = [c for c in cands if c.healthy]
        if not kept:
            cycle.failed_open = True
            return cands
        for c in cands:
            if not c.healthy:
                cycle.reject(self.name, c, "not reporting status")
        return kept
