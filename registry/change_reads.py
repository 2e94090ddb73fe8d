"""Watchers woken by one write read its changes from the database once.

Every watcher at the newest revision wakes when a write commits and asks the change log
for what follows the revision it has: a thousand watchers made a thousand identical
queries per write (~3 ms of registry CPU each, bench.registry_bench's resuming herd).
Reads of the same revision and batch that start while one is in flight share it.
Nothing is kept once it returns, so no read answers from before it was asked; a watcher
that a later commit passed by reads again (it checks the hub's newest revision).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from modelyard.v1 import registry_pb2

Changes = tuple[list[registry_pb2.CatalogChange], int]  # the changes, the current revision


class SharedChangeReads:
    def __init__(self, read: Callable[[int, int], Awaitable[Changes]]) -> None:
        self._read = read
        self._pending: dict[tuple[int, int], asyncio.Future[Changes]] = {}
        self.reads = 0  # change-log reads made

    async def after(self, revision: int, limit: int) -> Changes:
        """Up to `limit` changes after `revision` and the current revision; the list is
        shared with the other watchers that asked at once: read it, never change it."""
        key = (revision, limit)
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(key))
            # Retrieved even when every waiter was cancelled (no "never retrieved").
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._pending[key] = pending
        # Shielded: one watcher hanging up must not cancel the read the others await.
        return await asyncio.shield(pending)

    async def _load(self, key: tuple[int, int]) -> Changes:
        try:
            self.reads += 1
            return await self._read(*key)
        finally:
            del self._pending[key]
