"""The in-process backend: an LRU of encoded entries bounded in bytes, with a TTL.

Expired entries are dropped when met (a get) and from the cold end when room is needed;
nothing runs in the background. The clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class MemoryBackend:
    def __init__(
        self,
        max_bytes: int,
        *,
        max_entry_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[int], None] = lambda _n: None,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self._clock = clock
        self._on_evict = on_evict  # called with the count of entries dropped for room
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.bytes_held = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        value, expires_at = found
        if self._clock() >= expires_at:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Store; False when the value is over the per-entry cap (nothing stored)."""
        if len(value) > self.max_entry_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        evicted = 0
        while self._entries and self.bytes_held + len(value) > self.max_bytes:
            oldest = next(iter(self._entries))
            expired = self._entries[oldest][1] <= self._clock()
            self._drop(oldest)
            evicted += 0 if expired else 1
        self._entries[key] = (value, self._clock() + ttl_s)
        self.bytes_held += len(value)
        if evicted:
            self._on_evict(evicted)
        return True

    async def close(self) -> None:
        self._entries.clear()
        self.bytes_held = 0

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.bytes_held -= len(value)
