"""Keep a session on one worker (its prompt prefix stays in that worker's KV cache),
unless that worker is much busier than the least busy one."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from router.scheduling.load import load_of
from router.scheduling.types import Candidate, CycleState, Request

# Cycle scratch: (session key, the workers it ranks first over the whole pool), left by
# a sampled cycle (sample.py) that looked them up.
SESSION_TOP = "affinity.session_top"


def session_weight(session_key: str) -> Callable[[str], int]:
    """The rendezvous weight of each worker for `session_key`: blake2b of the session key,
    a NUL and the worker's address. The session's part is hashed once, so weighing many
    workers costs one hash copy each."""
    prefix = hashlib.blake2b(f"{session_key}\0".encode(), digest_size=8)

    def weight(worker: str) -> int:
        h = prefix.copy()
        h.update(worker.encode())
        return int.from_bytes(h.digest(), "big")

    return weight


def rendezvous_ranked(session_key: str, workers: Iterable[str], count: int) -> list[str]:
    """The `count` workers a session prefers most, first first: what a sampled cycle must
    score so that the scorer's choice among survivors is the one it makes over all."""
    return heapq.nlargest(count, set(workers), key=session_weight(session_key))


@dataclass(frozen=True)
class AffinityScorer:
    name: str = "affinity"
    # The preferred worker loses its bonus when its load exceeds the least loaded
    # worker's by this many tokens: a warm prefix is not worth a long queue.
    max_extra_load_tokens: float = 4096.0

    def score(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> dict[Candidate, float]:
        if not req.session_key or not cands:
            return {c: 0.0 for c in cands}
        # Rendezvous hashing: the same worker wins while it stays in the pool, and a
        # worker leaving moves only its own sessions.
        workers = {c.worker for c in cands}
        # Every worker outside the session's top few weighs less than any inside: when
        # one of those is here, the winner is among them (fewer hashes, same answer).
        top = cycle.data.get(SESSION_TOP)
        if isinstance(top, tuple) and top[0] == req.session_key:
            workers = (workers & top[1]) or workers
        preferred = max(workers, key=session_weight(req.session_key))
        least = min(map(load_of, cands))
        out = dict.fromkeys(cands, 0.0)
        for c in cands:
            if c.worker == preferred and load_of(c) - least <= self.max_extra_load_tokens:
                out[c] = 1.0
        return out
