"""Lower predicted TTFT scores higher (the LATENCY objective's signal)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.scheduling.predict import predicted_ttfts
from router.scheduling.scorers._scale import lower_is_better
from router.scheduling.types import Candidate, CycleState, Request


@dataclass(frozen=True)
class LatencyScorer:
    name: str = "latency"

    def score(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> dict[Candidate, float]:
        return lower_is_better(predicted_ttfts(req, cands, cycle))
