"""A cheaper model scores higher (the COST objective's signal)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelyard.pricing import price_per_1k
from router.scheduling.scorers._scale import lower_is_better
from router.scheduling.types import Candidate, CycleState, Request


@dataclass(frozen=True)
class CostScorer:
    name: str = "cost"

    def score(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> dict[Candidate, float]:
        # One price per model message (a pool's candidates of a model share it).
        prices: dict[int, float] = {}
        raw: dict[Candidate, float] = {}
        for c in cands:
            price = prices.get(id(c.model))
            if price is None:
                price = prices[id(c.model)] = price_per_1k(c.model.pricing)
            raw[c] = price
        return lower_is_better(raw)
