"""The response cache over one backend: encode, decode, deadlines and counts.

A backend that fails, times out or returns garbage never fails a request: the lookup is a
miss (the worker serves it), the store is skipped, and both are counted and logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from router.cache.entry import BadEntry, Entry
from router.metrics import ResponseCacheMetrics

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 300
MAX_TTL_S = 86400


class Backend(Protocol):
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
        timeout_s: float = 0.1,
        metrics: ResponseCacheMetrics | None = None,
        name: str = "memory",
    ) -> None:
        self.backend = backend
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._name = name  # for logs: "memory" or "redis", never the URL (it may hold a password)

    async def get(self, key: str) -> Entry | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                data = await self.backend.get(key)
            entry = None if data is None else Entry.decode(data)
        except Exception as err:  # any failure (a timeout too) is a miss
            self._backend_failed("get", err)
            entry = None
        if self._metrics is not None:
            self._metrics.lookups.labels(result="miss" if entry is None else "hit").inc()
        return entry

    async def put(self, key: str, entry: Entry, ttl_s: float) -> None:
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

    def _backend_failed(self, op: str, err: BaseException) -> None:
        why = "bad entry" if isinstance(err, BadEntry) else type(err).__name__
        log.warning(
            "response cache (%s): %s failed (%s); serving from the workers", self._name, op, why
        )
        if self._metrics is not None:
            self._metrics.backend_errors.labels(op=op).inc()
