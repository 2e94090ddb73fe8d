"""The bounded-sample stage: on a large pool, filter and score a sample, not everyone.

In the manner of kube-scheduler's `percentageOfNodesToScore`: a cycle over more than
`size` candidates filters them in batches of `size`, in an order that puts first the
candidates that matter for the answer (those holding the request's prefix, the session's
rendezvous targets, warm copies), then a random draw of the rest, and stops once a batch
leaves `min_survivors`. Filters still judge every candidate that is scored, so a sample
never picks a filtered-out worker; a batch that filters to too few draws another, up to
the whole pool. A random sample of the loaded rest is power-of-d choices: the least
loaded of d random workers is nearly as good as the least loaded of all.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from router.scheduling.filtering import apply_filters
from router.scheduling.scorers.affinity import SESSION_TOP
from router.scheduling.types import Candidate, CandidatePool, CycleState, Filter, Request

DEFAULT_SIZE = 16


@dataclass(frozen=True)
class BoundedSample:
    size: int = DEFAULT_SIZE
    # At most this share of a batch goes to prefix holders: the rest still sees load.
    holders_share: float = 0.5
    affinity_targets: int = 3
    # Warm copies fill up to this share of the first batch; the rest is drawn from all,
    # so a cold worker with an idle accelerator still gets a look.
    resident_share: float = 0.75
    rng: random.Random = field(default_factory=random.Random, compare=False)

    @property
    def min_survivors(self) -> int:
        return max(1, self.size // 4)

    def survivors(
        self,
        req: Request,
        pool: CandidatePool,
        filters: Sequence[Filter],
        cycle: CycleState,
    ) -> list[Candidate]:
        """Filtered candidates from batches of the draw, until enough survive."""
        targets = pool.affinity_targets(req, self.affinity_targets)
        if targets:
            # The session's first workers over the whole pool: the affinity scorer then
            # weighs only those among the survivors (its answer is one of them if any is).
            cycle.data[SESSION_TOP] = (req.session_key, frozenset(c.worker for c in targets))
        draw = self.draw(req, pool, targets)
        # A request many models can take ("pick for me") looks at each model once more:
        # the cost grows with its models, not with the pool.
        models = pool.model_count
        size = self.size + models if models > 1 else self.size
        kept: list[Candidate] = []
        # Survivors of a batch a filter let through because nothing in it passed
        # (healthy's fail-open): trusted only if the rest of the pool has nothing better.
        provisional: list[Candidate] = []
        while len(kept) < self.min_survivors:
            batch = list(itertools.islice(draw, size))
            if not batch:
                break
            cycle.failed_open = False
            passed = apply_filters(filters, req, batch, cycle)
            (provisional if cycle.failed_open else kept).extend(passed)
        cycle.failed_open = not kept and bool(provisional)
        return kept or provisional

    def draw(
        self, req: Request, pool: CandidatePool, targets: Sequence[Candidate]
    ) -> Iterator[Candidate]:
        """Every candidate at most once: the ones that matter first (prefix holders, then
        the session's `targets`; with several models, one random candidate of each), then
        warm copies, then random, models in turn."""
        seen: set[int] = set()
        holders = pool.prefix_holders(req, max(1, int(self.size * self.holders_share)))
        first: Iterable[Candidate] = itertools.chain(holders, targets)
        if pool.model_count > 1:
            # The session's top workers list every model: a few of theirs are enough for
            # affinity, and each model gets its look before the warm copies.
            first = itertools.chain(
                holders,
                targets[: self.min_survivors],
                itertools.islice(pool.shuffled(self.rng), pool.model_count),
            )
        resident = itertools.islice(pool.resident(self.rng), int(self.size * self.resident_share))
        for cand in itertools.chain(first, resident, pool.shuffled(self.rng)):
            if id(cand) not in seen:
                seen.add(id(cand))
                yield cand
