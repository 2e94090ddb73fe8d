"""The cache's in-memory bookkeeping: who holds which entry, the bytes promised to
downloads in progress, and the entries being evicted.

One lock guards it, taken on the event loop (fetch, release) and in the store's threads;
it is never held over file I/O. Bytes on disk come from the caller (`Candidate` lists of
entries and quarantined items), so this module does no I/O at all.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from modelyard.errors import ResourceExhausted


@dataclass(frozen=True)
class Candidate:
    """Something on disk that counts against the budget and may be deleted to make room."""

    key: str  # cache key, or quarantine.PREFIX + name
    size: int
    label: str  # for the log
    in_use: bool = False  # held by another process sharing the cache: never a victim


class CacheBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self._refs: dict[str, int] = {}  # fetches in progress + loaded models, per entry
        self._waiting: dict[str, int] = {}  # of those, fetches waiting on the entry's task
        self._reserved: dict[str, int] = {}  # bytes promised to each download (by its token)
        self._evicting: dict[str, threading.Event] = {}  # set once the files are gone

    # -- holders -------------------------------------------------------------------

    def acquire(self, key: str) -> None:
        with self.lock:
            self._refs[key] = self._refs.get(key, 0) + 1

    def release(self, key: str) -> None:
        with self.lock:
            _decrement(self._refs, key)

    def wait_start(self, key: str) -> None:
        with self.lock:
            self._waiting[key] = self._waiting.get(key, 0) + 1

    def wait_end(self, key: str) -> None:
        with self.lock:
            _decrement(self._waiting, key)

    def held_by_others(self, key: str) -> bool:
        """Whether the entry is in use beyond the fetches now waiting for it (a loaded model,
        or a fetch that returned it and whose load has not ended)."""
        with self.lock:
            return self._refs.get(key, 0) > self._waiting.get(key, 0)

    # -- room ----------------------------------------------------------------------

    def reserve(
        self,
        token: str,
        size: int,
        candidates: list[Candidate],
        *,
        replacing: str = "",
        elsewhere: int = 0,
    ) -> list[Candidate]:
        """Promise `size` bytes to download `token`; the candidates to delete for it (marked
        as being evicted: delete them, then call `evicted`). RESOURCE_EXHAUSTED when even
        deleting every unused candidate leaves too little. `replacing`: the entry the
        download will replace (its bytes do not count); `elsewhere`: bytes that downloads
        of other processes sharing the cache reserved."""
        with self.lock:
            counted = (c for c in candidates if c.key != replacing)
            used = sum(c.size for c in counted if c.key not in self._evicting) + elsewhere
            used += sum(self._reserved.values())
            victims: list[Candidate] = []
            for c in candidates:  # quarantine first, then least recently used
                if used + size <= self.limit:
                    break
                if c.key == replacing or c.in_use or self._refs.get(c.key, 0) > 0:
                    continue
                if c.key in self._evicting:
                    continue
                victims.append(c)
                used -= c.size
            if used + size > self.limit:
                free = max(self.limit - used, 0)
                raise ResourceExhausted(
                    f"artifact needs {size} bytes; the artifact cache has {free} free of "
                    f"{self.limit} and the rest is in use (models loaded from it, or "
                    "downloads in progress): unload a model, or raise "
                    "MODELYARD_ARTIFACTS_MAX_CACHE_BYTES",
                    reason="ARTIFACT_CACHE_FULL",
                    metadata={"needed_bytes": str(size), "available_bytes": str(free)},
                    retry_after_s=30.0,
                )
            self._reserved[token] = size
            for victim in victims:
                self._evicting[victim.key] = threading.Event()
            return victims

    def evicted(self, key: str) -> None:
        with self.lock:
            done = self._evicting.pop(key, None)
        if done is not None:
            done.set()

    def unreserve(self, token: str) -> None:
        with self.lock:
            self._reserved.pop(token, None)

    def reserved_bytes(self) -> int:
        with self.lock:
            return sum(self._reserved.values())

    def wait_for_eviction(self, key: str) -> None:
        """In a thread: until an eviction of `key` that started before now is done."""
        with self.lock:
            done = self._evicting.get(key)
        if done is not None:
            done.wait()


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
