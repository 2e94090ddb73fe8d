"""Keep a session on one worker (its prompt prefix stays in that worker's KV cache),
unless that worker is much busier than the least busy one."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from router.scheduling.load import load_of
from router.scheduling.types import Candidate, CycleState, Request


def _weight(session_key: str, worker: str) -> int:
    digest = hashlib.blake2b(f"{session_key}\0{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_ranked(session_key: str, workers: Iterable[str], count: int) -> list[str]:
    """The `count` workers a session prefers most, first first: what a sampled cycle must
    score so that the scorer's choice among survivors is the one it makes over all."""
    # The same weights as _weight, with the session's part hashed once: this ranks a whole
    # pool when a session is first seen.
    prefix = hashlib.blake2b(f"{session_key}\0".encode(), digest_size=8)

    def weight(worker: str) -> int:
        h = prefix.copy()
        h.update(worker.encode())
        return int.from_bytes(h.digest(), "big")

    return heapq.nlargest(count, set(workers), key=weight)


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
        preferred = max({c.worker for c in cands}, key=lambda w: _weight(req.session_key, w))
        least = min(load_of(c) for c in cands)
        return {
            c: 1.0
            if c.worker == preferred and load_of(c) - least <= self.max_extra_load_tokens
            else 0.0
            for c in cands
        }
