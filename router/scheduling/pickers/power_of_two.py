"""Power of two choices: sample two candidates at random, keep the better scored.
Near-optimal load spreading without herding on stale load figures."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from router.scheduling.pickers._order import chosen_then_rest
from router.scheduling.types import Candidate, CycleState, Request


@dataclass
class PowerOfTwoPicker:
    name: str = "power_of_two"
    rng: random.Random = field(default_factory=random.Random)

    def pick(
        self, req: Request, scored: Sequence[tuple[Candidate, float]], cycle: CycleState
    ) -> list[Candidate]:
        if not scored:
            return []
        if len(scored) == 1:
            return [scored[0][0]]
        (a, sa), (b, sb) = self.rng.sample(list(scored), 2)
        return chosen_then_rest(a if sa >= sb else b, scored)
