"""Take the highest score; break ties (within epsilon) by power of two choices on load,
so equal workers share traffic instead of herding onto the first one. The two choices
are the next two tied candidates in rotation rather than a random draw: as good at
spreading load, and deterministic for tests and reasoning."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from router.scheduling.load import load_of
from router.scheduling.pickers._order import chosen_then_rest
from router.scheduling.types import Candidate, CycleState, Request


@dataclass
class MaxScorePicker:
    name: str = "max_score"
    epsilon: float = 1e-6
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def pick(
        self, req: Request, scored: Sequence[tuple[Candidate, float]], cycle: CycleState
    ) -> list[Candidate]:
        if not scored:
            return []
        best = max(s for _, s in scored)
        tied = sorted(
            (c for c, s in scored if s >= best - self.epsilon),
            key=lambda c: (c.worker, c.model_key),
        )
        if len(tied) == 1:
            chosen = tied[0]
        else:
            turn = next(self._turn)
            a, b = tied[turn % len(tied)], tied[(turn + 1) % len(tied)]
            chosen = a if load_of(a) <= load_of(b) else b
        return chosen_then_rest(chosen, scored)
