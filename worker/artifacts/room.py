"""Room for a download in a cache that several processes share: its bytes reserved where
the others see them, and victims chosen among the entries no process holds.

Under the cache lock (locks.py): the leases of the entries are tried exclusively without
waiting (an entry whose lease cannot be taken is held by some process: never a victim),
the reservations of other processes' live downloads are summed from their `.owner`
files, and `CacheBudget.reserve` picks victims, least recently used first. The victims'
files are deleted after the cache lock is let go, each while its lease is still held
exclusively, so no process can start using one halfway through its deletion.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from worker.artifacts.budget import CacheBudget, Candidate
from worker.artifacts.locks import Leases, WorkLock, exclusive, reserved_elsewhere, try_exclusive
from worker.artifacts.quarantine import Quarantine
from worker.artifacts.records import CacheEntry
from worker.artifacts.uri import without_query

log = logging.getLogger(__name__)


class Room:
    def __init__(
        self,
        root: Path,
        budget: CacheBudget,
        quarantine: Quarantine,
        leases: Leases,
        entries: Callable[[], list[CacheEntry]],
        drop: Callable[[str], None],
    ) -> None:
        self.cache_lock, self.tmp = root / "locks" / "cache.lock", root / "tmp"
        self.budget, self.quarantine, self.leases = budget, quarantine, leases
        self.entries, self.drop = entries, drop
        self.works: set[str] = set()  # this process's downloads' directories in tmp/

    def make(self, owner: WorkLock, token: str, key: str, size: int) -> None:
        """Reserve `size` bytes for download `token` (of entry `key`): the quarantine first,
        then unused entries (LRU) are deleted to make room, or RESOURCE_EXHAUSTED. Entries
        another process holds are never taken."""
        budget = self.budget
        with exclusive(self.cache_lock):
            candidates, held = self._candidates(key)
            try:
                owner.record(size)  # other processes count it from now on
                others = reserved_elsewhere(self.tmp, self.works)
                victims = budget.reserve(token, size, candidates, replacing=key, elsewhere=others)
            except BaseException:
                _close_all(held)
                raise
            taken = {v.key for v in victims}
            _close_all({k: fd for k, fd in held.items() if k not in taken})
        for victim in victims:  # the files go outside the locks, the lease still exclusive
            log.info(
                "evicting %s (%d bytes, unused) from the artifact cache", victim.label, victim.size
            )
            try:
                self.drop(victim.key)
            finally:
                if (fd := held.get(victim.key)) is not None:
                    os.close(fd)
                budget.evicted(victim.key)

    def _candidates(self, key: str) -> tuple[list[Candidate], dict[str, int]]:
        """What may be deleted for a download of `key`, and the leases, taken exclusively,
        of the entries no process holds."""
        items = self.quarantine.items()
        candidates = [Candidate(k, n, str(p)) for k, n, p in items]
        held: dict[str, int] = {}
        for e in self.entries():
            if e.key != key and (fd := try_exclusive(self.leases.path(e.key))) is not None:
                held[e.key] = fd
            in_use = e.key not in held
            candidates.append(Candidate(e.key, e.size, without_query(e.uri), in_use))
        return candidates, held


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
