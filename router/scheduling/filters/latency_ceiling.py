"""Drop candidates predicted slower than the request's max TTFT."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.scheduling.predict import predicted_ttft_ms
from router.scheduling.types import Candidate, CycleState, Request


@dataclass(frozen=True)
class LatencyCeilingFilter:
    name: str = "latency_ceiling"

    def filter(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> Sequence[Candidate]:
        if req.max_ttft_ms is None:
            return cands
        kept: list[Candidate] = []
        for c in cands:
            predicted = predicted_ttft_ms(req, c, cands, cycle)
            if predicted <= req.max_ttft_ms:
                kept.append(c)
            else:
                cycle.reject(self.name, c, f"predicted TTFT {predicted:.0f} ms")
        return kept
