"""Watch: a snapshot, then every change in revision order, for as long as the caller reads.

Each watcher reads the change log in batches from the revision it has reached
(watchers woken by the same write share one read: `registry.change_reads`); in
between it waits on the `WatchHub` and holds no database connection. The hub
learns of new revisions two ways: the store tells it after each commit in this
process, and one poller per process reads the revision row
every `poll_interval_s`, so writes made by another registry replica (sharing a
PostgreSQL database) reach this replica's watchers too.

Memory per watcher is bounded by one batch: the stream is pulled, so a slow
reader only falls behind in the log; once it falls behind what is retained it
gets a fresh snapshot, never an unbounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Protocol

from modelyard.v1 import registry_pb2
from registry import metrics

log = logging.getLogger(__name__)

# Changes read from the log per query; also the most a watcher holds in memory.
BATCH = 256
# How long closing the store waits for cancelled watchers to finish their last read.
CLOSE_WAIT_S = 5.0


class ChangeSource(Protocol):
    async def snapshot(self) -> registry_pb2.WatchResponse:
        """A snapshot event (shared between watchers: read, never changed)."""
        ...

    async def changes_after(
        self, revision: int, limit: int
    ) -> tuple[list[registry_pb2.CatalogChange], int]:
        """Up to `limit` changes after `revision`, and the current revision."""
        ...


class WatchHub:
    """Wakes watchers when the catalogue revision moves past what they have seen."""

    def __init__(
        self, read_revision: Callable[[], Awaitable[int]], poll_interval_s: float = 1.0
    ) -> None:
        self._read_revision = read_revision
        self._poll_interval_s = poll_interval_s
        self._latest = 0
        self._moved = asyncio.Event()
        self._watchers = 0
        self._idle = asyncio.Event()  # set while nobody watches
        self._idle.set()
        self._poller: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def latest(self) -> int:
        return self._latest

    @property
    def watchers(self) -> int:
        return self._watchers

    def advance(self, revision: int) -> None:
        """Record that `revision` is committed; wake every waiting watcher."""
        if revision <= self._latest:
            return
        self._latest = revision
        metrics.REVISION.set(revision)
        # Swap the event: waiters hold the old one, which is set once and dropped.
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def wait_past(self, revision: int) -> None:
        """Return once a revision newer than `revision` is known."""
        while self._latest <= revision:
            await self._moved.wait()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Count one watcher; the poller runs while anyone watches."""
        self._watchers += 1
        self._idle.clear()
        metrics.WATCHERS.inc()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="watch-poll")
        try:
            yield
        finally:
            self._watchers -= 1
            metrics.WATCHERS.dec()
            if self._watchers == 0:
                self._idle.set()
            if self._watchers == 0 and self._poller is not None:
                # Cancelled here, awaited in close(): a poller still unwinding a database
                # read must not outlive the store's engine.
                self._poller.cancel()
                self._stopping.add(self._poller)
                self._poller.add_done_callback(self._stopping.discard)
                self._poller = None

    async def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Stop the poller, once the watchers (cancelled with their server) have ended or
        `wait_s` has passed: a watcher cancelled in a database read is still closing its
        connection, and an engine disposed under it left that close to hang the loop's
        shutdown (seen as a registry test's teardown that never ended)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._idle.wait()
        if self._poller is not None:
            self._poller.cancel()
            self._stopping.add(self._poller)
            self._poller = None
        stopping, self._stopping = list(self._stopping), set()
        await asyncio.gather(*stopping, return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            try:
                self.advance(await self._read_revision())
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database being briefly away must not end every watch; the
                # next poll tries again and watchers keep what they have.
                log.warning("cannot read the catalogue revision; retrying", exc_info=True)
            await asyncio.sleep(self._poll_interval_s)


MAX_REVISION = (1 << 63) - 1
AHEAD = "resume_too_old"  # the metric's reason for a watcher that must resync


async def watch(
    source: ChangeSource, hub: WatchHub, since_revision: int, *, batch: int = BATCH
) -> AsyncGenerator[registry_pb2.WatchResponse]:
    """The Watch stream: a snapshot unless resuming, then each change once, in order."""
    with hub.watching():
        last = since_revision
        # Revisions are SQL BIGINTs: a resume point past them is ahead of any registry and
        # resyncs like any watcher ahead of the database (never reaches a query).
        if since_revision == 0 or since_revision > MAX_REVISION:
            snapshot = await _snapshot(source, hub, "start" if since_revision == 0 else AHEAD)
            last = snapshot.snapshot.revision
            yield snapshot
        while True:
            if last == hub.latest:
                # Nothing newer is known until the hub moves: a herd of watchers (given
                # a snapshot, or resuming where they were) costs no change-log query each.
                await hub.wait_past(last)
            changes, current = await source.changes_after(last, batch)
            hub.advance(current)
            if _gap(changes, last, current):
                reason = "resume_too_old" if last == since_revision else "behind_retention"
                log.info("watcher at revision %d is past the change log; sending a snapshot", last)
                snapshot = await _snapshot(source, hub, reason)
                last = snapshot.snapshot.revision
                yield snapshot
                continue
            for change in changes:
                yield registry_pb2.WatchResponse(change=change)
                last = change.revision
            if not changes:
                await hub.wait_past(last)


def _gap(changes: list[registry_pb2.CatalogChange], last: int, current: int) -> bool:
    """Revisions are contiguous, so a missing `last + 1` was pruned (or the database
    was replaced: a watcher ahead of it resyncs too)."""
    if changes:
        return changes[0].revision != last + 1
    return current != last


async def _snapshot(source: ChangeSource, hub: WatchHub, reason: str) -> registry_pb2.WatchResponse:
    snapshot = await source.snapshot()
    metrics.SNAPSHOTS.labels(reason).inc()
    hub.advance(snapshot.snapshot.revision)
    return snapshot
