"""The response cache over one backend: encode, decode, deadlines and counts.

A backend that fails, times out or returns garbage never fails a request: the lookup is a
miss (the worker serves it), the store is skipped, and both are counted and logged. After
a failure the backend is left alone for `pause_s`, so a hung store costs one deadline per
pause, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from router.cache.entry import BadEntry, Entry
from router.metrics import ResponseCacheMetrics

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 300
MAX_TTL_S = 86400


class Backend(Protocol):
    max_entry_bytes: int

    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes, ttl_s: float) -> bool: ...
    async def close(self) -> None: ...


def ttl_of(ttl_seconds: int) -> int:
    """The policy's TTL: 0 is the default, and never more than the maximum."""
    return min(ttl_seconds or DEFAULT_TTL_S, MAX_TTL_S)


class ResponseCache:
    def __init__(
        self,
        backend: Backend,
        *,
        timeout_s: float = 0.25,
        metrics: ResponseCacheMetrics | None = None,
        name: str = "memory",
        pause_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self._timeout_s = timeout_s
        self._pause_s = pause_s
        self._clock = clock
        self._paused_until = float("-inf")
        self._metrics = metrics
        self._name = name  # for logs: "memory" or "redis", never the URL (it may hold a password)

    async def get(self, key: str) -> Entry | None:
        if self._paused():
            return self._counted(None)
        try:
            async with asyncio.timeout(self._timeout_s):
                data = await self.backend.get(key)
            entry = None if data is None else Entry.decode(data)
        except Exception as err:  # any failure (a timeout too) is a miss
            self._backend_failed("get", err)
            entry = None
        return self._counted(entry)

    async def put(self, key: str, entry: Entry, ttl_s: float) -> None:
        if self._paused():
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                stored = await self.backend.put(key, entry.encode(), ttl_s)
        except Exception as err:  # a store is best effort
            self._backend_failed("put", err)
            return
        if self._metrics is not None:
            self._metrics.stores.labels(result="stored" if stored else "too_large").inc()

    async def close(self) -> None:
        try:
            await self.backend.close()
        except Exception as err:  # closing at shutdown: nothing to do about it
            log.warning("response cache (%s): close failed: %s", self._name, type(err).__name__)

    def _paused(self) -> bool:
        return self._clock() < self._paused_until

    def count_shared(self) -> None:
        """A miss answered by an identical request in flight (router/cache/flight.py)."""
        if self._metrics is not None:
            self._metrics.lookups.labels(result="shared").inc()

    def _counted(self, entry: Entry | None) -> Entry | None:
        if self._metrics is not None:
            self._metrics.lookups.labels(result="miss" if entry is None else "hit").inc()
        return entry

    def _backend_failed(self, op: str, err: BaseException) -> None:
        if isinstance(err, BadEntry):  # one bad value, not a sick store: no pause
            log.warning("response cache (%s): %s found a bad entry; a miss", self._name, op)
        else:
            self._paused_until = self._clock() + self._pause_s
            log.warning(
                "response cache (%s): %s failed (%s); served by the workers, store left "
                "alone for %.0f s",
                self._name,
                op,
                type(err).__name__,
                self._pause_s,
            )
        if self._metrics is not None:
            self._metrics.backend_errors.labels(op=op).inc()
