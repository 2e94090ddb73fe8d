"""The candidates of one request, built only when the scheduling cycle asks for them.

Every (worker, model) pair of the request's models is a candidate, but on a large pool a
cycle scores a bounded sample (router/scheduling/sample.py): this pool answers its
questions (who holds the prefix, the session's workers, who is warm, a random draw) from
indexes kept as statuses arrive, so the work per request does not grow with the pool.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Mapping, Sequence

from modelyard.refs import key_of
from modelyard.v1 import model_pb2
from router.accounting import Accounting
from router.relay.candidates import candidate_of
from router.scheduling.types import Candidate, Request
from router.state.local_load import LocalLoad
from router.workers import WorkerHandle, WorkerPool


class IndexedPool:
    def __init__(
        self,
        models: Sequence[model_pb2.Model],
        pool: WorkerPool,
        acct: Accounting,
        load: LocalLoad,
        rng: random.Random | None = None,
    ) -> None:
        self._models = models
        self._keys = [key_of(m) for m in models]
        # The pool replaces (never edits) these two on a change: this cycle keeps its pair.
        self._workers = pool.workers
        self.handles: Mapping[str, WorkerHandle] = pool.by_address
        self._index = pool.index
        self._acct = acct
        self._in_flight, self._prefilling = load.in_flight, load.prefilling
        self._history, self._sessions = load.history, load.sessions
        self._rng = rng or _RNG
        # Per model, by address: built at most once per cycle.
        self._built: list[dict[str, Candidate]] = [{} for _ in models]

    def __len__(self) -> int:
        return len(self._models) * len(self._workers)

    def all(self) -> list[Candidate]:
        return [self._get(h, m) for m in range(len(self._models)) for h in self._workers]

    def prefix_holders(self, req: Request, limit: int) -> list[Candidate]:
        out: list[Candidate] = []
        for cand in self._holders(req):
            if cand not in out:
                out.append(cand)
                if len(out) >= limit:
                    break
        return out

    def _holders(self, req: Request) -> Iterator[Candidate]:
        # Longest prefix first: its holders save the most prefill.
        for link in reversed(req.prefix.hashes):
            for m, key in enumerate(self._keys):
                published = self._index.holders(key, link)
                guessed = self._history.workers_of(key, link)
                # A popular prefix may sit on most of the pool: a random few of its holders.
                for address in itertools.chain(_draw(published, self._rng), guessed):
                    handle = self.handles.get(address)
                    if handle is not None:
                        yield self._get(handle, m)

    def affinity_targets(self, req: Request, count: int) -> list[Candidate]:
        if not req.session_key:
            return []
        top = self._sessions.top(
            req.session_key, (h.address for h in self._workers), count, self._workers
        )
        handles = [self.handles[a] for a in top if a in self.handles]
        return [self._get(h, m) for h in handles for m in range(len(self._models))]

    def resident(self, rng: random.Random) -> Iterator[Candidate]:
        draws = [_draw(self._index.resident(key), rng) for key in self._keys]
        # Models in turn, so each gets its warm copies looked at.
        for turn in itertools.zip_longest(*draws):
            for m, address in enumerate(turn):
                handle = self.handles.get(address) if address is not None else None
                if handle is not None:
                    yield self._get(handle, m)

    @property
    def model_count(self) -> int:
        return len(self._models)

    def shuffled(self, rng: random.Random) -> Iterator[Candidate]:
        # Stratified by model: each turn draws one random worker per model, so a draw
        # of a request that many models can take looks at every model early.
        models = len(self._models)
        draws = [_permutation(len(self._workers), rng) for _ in range(models)]
        shift = rng.randrange(models) if models > 1 else 0  # no model always first
        order = [(m + shift) % models for m in range(models)]
        for turn in zip(*draws, strict=True):
            for m in order:
                yield self._get(self._workers[turn[m]], m)

    def _get(self, handle: WorkerHandle, m: int) -> Candidate:
        built = self._built[m]
        cand = built.get(handle.address)
        if cand is None:
            cand = built[handle.address] = candidate_of(
                handle,
                self._models[m],
                self._keys[m],
                self._acct,
                self._in_flight,
                self._history,
                self._prefilling,
            )
        return cand


def _draw(items: Sequence[str], rng: random.Random) -> Iterator[str]:
    """`items` in random order, lazily: O(1) per item drawn."""
    for i in _permutation(len(items), rng):
        yield items[i]


def _permutation(n: int, rng: random.Random) -> Iterator[int]:
    """0..n-1 each once, from a random start by a random stride coprime to n: a random
    enough order for sampling, without materialising n numbers."""
    if n <= 0:
        return
    start = rng.randrange(n)
    stride = rng.randrange(1, n) if n > 1 else 1
    while math.gcd(stride, n) != 1:
        stride = rng.randrange(1, n)
    for i in range(n):
        yield (start + i * stride) % n


_RNG = random.Random()
