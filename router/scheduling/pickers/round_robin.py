"""Rotate through the candidates, ignoring scores: the baseline the benchmarks and
the latency test compare against."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from router.scheduling.types import Candidate, CycleState, Request


@dataclass
class RoundRobinPicker:
    name: str = "round_robin"
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def pick(
        self, req: Request, scored: Sequence[tuple[Candidate, float]], cycle: CycleState
    ) -> list[Candidate]:
        if not scored:
            return []
        # Rotate by a stable order (worker, model), not by score.
        cands = sorted((c for c, _ in scored), key=lambda c: (c.worker, c.model_key))
        shift = next(self._turn) % len(cands)
        return cands[shift:] + cands[:shift]
