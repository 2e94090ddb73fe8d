"""A small TTL cache of registry answers for the router's catalog: fresh entries answer
without a call, stale ones stay to answer during a registry outage. Bounded, because
keys come from requests (an "auto" request's tags): the oldest entry goes first."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_ENTRIES = 1024


class TtlCache(Generic[K, V]):
    """Values with the time they were fetched; at most `max_entries`, oldest put out first."""

    def __init__(
        self,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry[0] > self._ttl_s:
            return None
        return entry[1]

    def any_age(self, key: K) -> V | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (self._clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)
