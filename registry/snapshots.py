"""One catalogue snapshot read serves every watcher that needs it at once.

Every worker and router watches the whole catalogue, so a registry restart (or a
rollout of many workers) meets hundreds of Watch streams asking for a snapshot in the
same second: each read alone is a full table scan and a proto conversion of every
model (~350 ms at 10,000 models), and wrapping it in a WatchResponse a deep copy
(~30 ms), and serializing it for the wire another ~17 ms per stream. Watchers that ask
while a read is in flight share it, the event and its wire bytes included, and the
newest stays cached while the revision has not moved, so only a change to the
catalogue costs a new read and one serialization. Memory: one snapshot, and its bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from modelyard.v1 import registry_pb2
from registry import metrics


class SharedSnapshots:
    def __init__(self, read: Callable[[], Awaitable[registry_pb2.WatchResponse]]) -> None:
        self._read = read
        self._cached: registry_pb2.WatchResponse | None = None
        self._pending: asyncio.Future[registry_pb2.WatchResponse] | None = None
        self._encoded: bytes | None = None  # the cached snapshot's wire bytes, once asked for
        self.reads = 0  # snapshots read from the database
        self.encodings = 0  # snapshots serialized for the wire

    async def at(self, revision: int) -> registry_pb2.WatchResponse:
        """A snapshot at `revision` or later, `revision` being the newest this replica
        knows of (the watch hub's; another replica's newer writes reach it within a
        poll, and a watcher given an older snapshot reads the changes after it)."""
        cached = self._cached
        if cached is not None and cached.snapshot.revision >= revision:
            return cached
        # A read in flight may have begun before `revision` was committed; if it comes
        # back older, the next read begins after it and is taken as it is.
        for _ in range(2):
            if self._pending is None:
                self._pending = asyncio.ensure_future(self._load())
            # Shielded: one watcher hanging up must not cancel the read the others await.
            snapshot = await asyncio.shield(self._pending)
            if snapshot.snapshot.revision >= revision:
                break
        return snapshot

    def encoded(self, event: registry_pb2.WatchResponse) -> bytes | None:
        """`event`'s wire bytes when it is the cached snapshot, serialized once for every
        watcher it goes to; None for any other event (the caller serializes those)."""
        if event is not self._cached:
            return None
        if self._encoded is None:
            self._encoded = event.SerializeToString()
            self.encodings += 1
        return self._encoded

    async def _load(self) -> registry_pb2.WatchResponse:
        try:
            self.reads += 1
            metrics.SNAPSHOT_READS.inc()
            snapshot = await self._read()
            self._cached, self._encoded = snapshot, None
            return snapshot
        finally:
            self._pending = None
