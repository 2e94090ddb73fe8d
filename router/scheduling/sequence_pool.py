"""A CandidatePool over candidates already built: answers by scanning them. For callers
that hold a list (tests, small pools); the relay's pool answers from indexes instead."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence

from router.scheduling.scorers.affinity import rendezvous_ranked
from router.scheduling.types import Candidate, Request


class SequencePool:
    def __init__(self, cands: Sequence[Candidate]) -> None:
        self._cands = cands

    def __len__(self) -> int:
        return len(self._cands)

    def all(self) -> Sequence[Candidate]:
        return self._cands

    def prefix_holders(self, req: Request, limit: int) -> list[Candidate]:
        if not req.prefix.hashes:
            return []
        depth = {c: req.prefix.held(c.prefix_held)[0] for c in self._cands}
        holders = sorted((c for c in self._cands if depth[c]), key=lambda c: -depth[c])
        return holders[:limit]

    def affinity_targets(self, req: Request, count: int) -> list[Candidate]:
        if not req.session_key:
            return []
        top = set(rendezvous_ranked(req.session_key, (c.worker for c in self._cands), count))
        return [c for c in self._cands if c.worker in top]

    def resident(self, rng: random.Random) -> Iterator[Candidate]:
        warm = [c for c in self._cands if not c.needs_load]
        return iter(rng.sample(warm, len(warm)))

    @property
    def model_count(self) -> int:
        return len({c.model_key for c in self._cands})

    def shuffled(self, rng: random.Random) -> Iterator[Candidate]:
        by_model: dict[str, list[Candidate]] = {}
        for c in self._cands:
            by_model.setdefault(c.model_key, []).append(c)
        if len(by_model) <= 1:
            return iter(rng.sample(list(self._cands), len(self._cands)))
        # Models in turn (as the relay's pool draws): every model gets an early look.
        draws = [rng.sample(group, len(group)) for group in by_model.values()]
        turns = itertools.zip_longest(*draws)
        return (c for turn in turns for c in turn if c is not None)
