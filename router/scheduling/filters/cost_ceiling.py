"""Drop models priced above the request's max cost per 1k tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelyard.pricing import price_per_1k
from router.scheduling.types import Candidate, CycleState, Request


@dataclass(frozen=True)
class CostCeilingFilter:
    name: str = "cost_ceiling"

    def filter(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> Sequence[Candidate]:
        if req.max_cost_per_1k is None:
            return cands
        kept: list[Candidate] = []
        for c in cands:
            price = price_per_1k(c.model.pricing)
            # A tiny tolerance: prices are floats from configuration.
            if price <= req.max_cost_per_1k + 1e-12:
                kept.append(c)
            else:
                cycle.reject(self.name, c, f"${price:g} per 1k tokens")
        return kept
