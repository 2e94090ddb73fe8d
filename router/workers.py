"""The router's workers: one channel each and their pushed status.

The pool starts from the configured addresses; discovery (router/discovery) adds and
removes workers as Consul's healthy set changes. Each worker's state comes from its
`WorkerService.WatchStatus` stream, so routing never waits on a scrape; ordering the
candidates is router/scheduling's job.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import grpc
from google.protobuf import duration_pb2

from modelyard.bearer import bearer_metadata
from modelyard.channel_options import CHANNEL_OPTIONS
from modelyard.prefix import SCHEME as PREFIX_SCHEME
from modelyard.refs import ModelKey, key_of, model_key
from modelyard.v1 import model_pb2, router_pb2, worker_pb2, worker_pb2_grpc
from router.state.worker_index import WorkerIndex
from router.worker_rpc import Metadata

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
# A watch silent for this many heartbeats is treated as dead and reopened.
STALE_AFTER_HEARTBEATS = 3
WATCH_BACKOFF_S = (0.25, 5.0)
# A worker that discovery dropped keeps its channel this long for calls still running.
REMOVE_GRACE_S = 30.0


@dataclass(eq=False)
class WorkerHandle:
    """One configured worker: its channel, stub and the last status it pushed."""

    address: str
    channel: grpc.aio.Channel
    stub: worker_pb2_grpc.WorkerServiceAsyncStub
    status: worker_pb2.WorkerStatus | None = None
    # True while the status watch is live: what the `healthy` filter checks.
    watching: bool = False
    last_error: str = ""
    # Per model, the prefix link hashes its pushed summary lists (modelyard/prefix.py);
    # a model absent here publishes none in our scheme. Built once per status change.
    prefix_sets: dict[ModelKey, frozenset[int]] = field(default_factory=dict)
    # Per model, its residency in `status` (rebuilt when it is another object): one
    # lookup per candidate, not a scan of the status's models.
    _residencies: tuple[
        worker_pb2.WorkerStatus | None, dict[ModelKey, worker_pb2.ResidencyState.ValueType]
    ] = field(default=(None, {}), init=False, repr=False)
    # The pool's index of resident models and published prefixes, kept current here.
    index: WorkerIndex | None = None
    # What every call to the worker carries (its API key): the channel has no
    # interceptors (router/worker_rpc.py says why).
    auth: Metadata = ()

    @property
    def worker_id(self) -> str:
        return self.status.worker_id if self.status is not None and self.status.worker_id else ""

    @property
    def name(self) -> str:
        """How logs and error messages name the worker."""
        return f"{self.worker_id} ({self.address})" if self.worker_id else self.address

    def residency(self, model: model_pb2.Model) -> worker_pb2.ResidencyState.ValueType:
        return self.residency_of(key_of(model))

    def residency_of(self, key: ModelKey) -> worker_pb2.ResidencyState.ValueType:
        return self.residencies().get(key, worker_pb2.RESIDENCY_STATE_UNSPECIFIED)

    def residencies(self) -> dict[ModelKey, worker_pb2.ResidencyState.ValueType]:
        status, table = self._residencies
        if status is not self.status:
            table = residencies_of(self.status) if self.status is not None else {}
            self._residencies = (self.status, table)
        return table

    def set_status(self, status: worker_pb2.WorkerStatus) -> None:
        previous = self.status
        self.status = status
        # Heartbeats repeat the last sequence: the summaries are unchanged then.
        if previous is None or not status.sequence or status.sequence != previous.sequence:
            self.prefix_sets = prefix_sets_of(status)
            if self.index is not None:
                self.index.set_residency(self.address, self.residencies())
                self.index.set_prefixes(self.address, self.prefix_sets)

    def prefix_held(self, model: model_pb2.Model) -> frozenset[int] | None:
        """The prefixes the worker says it holds for `model`; None: it does not say."""
        return self.prefix_sets.get(key_of(model))

    def tokens_per_second(self) -> float:
        return self.status.tokens_per_second if self.status is not None else 0.0

    def queued_tokens(self) -> int:
        return self.status.queued_tokens if self.status is not None else 0

    def info(self) -> router_pb2.WorkerInfo:
        return router_pb2.WorkerInfo(
            worker_id=self.worker_id,
            address=self.address,
            healthy=self.watching,
            breaker=router_pb2.BREAKER_STATE_CLOSED,  # the service fills in the real state
            status=self.status,
        )

    async def connect(self, timeout_s: float) -> None:
        """Wait until the channel is ready; TimeoutError after `timeout_s`."""
        if self.channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return
        async with asyncio.timeout(max(0.0, timeout_s)):
            await self.channel.channel_ready()


class WorkerPool:
    """The configured workers and one background status watch per worker."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        heartbeat_s: float = HEARTBEAT_S,
        connect: Callable[[str], grpc.aio.Channel] | None = None,
        api_key: str = "",
    ) -> None:
        self._heartbeat_s = heartbeat_s
        # Opens a worker's channel (router.main: with TLS when set).
        self._connect = connect or plaintext_channel
        self._auth = bearer_metadata(api_key)
        self._tasks: dict[WorkerHandle, asyncio.Task[None]] = {}
        self._started = False
        # Channels of removed workers, closing once their in-flight calls end.
        self._retiring: set[asyncio.Task[None]] = set()
        # Called with the address of each removed worker (breakers and metrics forget it).
        self.on_removed: list[Callable[[str], None]] = []
        self.index = WorkerIndex()
        self.workers: list[WorkerHandle] = []
        for address in dict.fromkeys(addresses):  # keep order, drop repeats
            self.workers.append(_new_handle(address, self._connect, self.index, self._auth))
        # Replaced, never changed, with `workers`: a cycle holds one consistent pair.
        self.by_address: dict[str, WorkerHandle] = {h.address: h for h in self.workers}

    def start(self) -> None:
        self._started = True
        for handle in self.workers:
            self._follow_in_background(handle)

    async def close(self) -> None:
        for task in [*self._tasks.values(), *self._retiring]:
            task.cancel()
        await asyncio.gather(*self._tasks.values(), *self._retiring, return_exceptions=True)
        self._tasks.clear()
        self._retiring.clear()
        for handle in self.workers:
            await handle.channel.close()

    def add(self, address: str) -> WorkerHandle:
        """Add a worker (no-op if known); its status watch starts if the pool has."""
        known = self.by_address.get(address)
        if known is not None:
            return known
        handle = _new_handle(address, self._connect, self.index, self._auth)
        # A new list, so an ordering in progress keeps iterating the old one.
        self.workers = [*self.workers, handle]
        self.by_address = {**self.by_address, address: handle}
        if self._started:
            self._follow_in_background(handle)
        log.info("worker %s added", address)
        return handle

    def remove(self, address: str, *, grace_s: float = REMOVE_GRACE_S) -> None:
        """Stop routing to a worker; calls already running on it get `grace_s` to finish."""
        handle = self.by_address.get(address)
        if handle is None:
            return
        self.workers = [h for h in self.workers if h is not handle]
        self.by_address = {h.address: h for h in self.workers}
        self.index.forget(address)
        handle.index = None
        task = self._tasks.pop(handle, None)
        if task is not None:
            task.cancel()
        handle.watching = False
        retiring = asyncio.create_task(handle.channel.close(grace_s), name=f"retire-{address}")
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        for listener in self.on_removed:
            listener(address)
        log.info("worker %s (%s) removed", handle.name, address)

    def set_addresses(self, addresses: Sequence[str]) -> None:
        """Make the pool hold exactly these workers (a discovery update)."""
        wanted = dict.fromkeys(addresses)
        for handle in list(self.workers):
            if handle.address not in wanted:
                self.remove(handle.address)
        for address in wanted:
            self.add(address)

    def _follow_in_background(self, handle: WorkerHandle) -> None:
        self._tasks[handle] = asyncio.create_task(
            self._follow(handle), name=f"watch-{handle.address}"
        )

    def warm_workers(self, model: model_pb2.Model) -> list[str]:
        return [
            h.worker_id or h.address
            for h in self.workers
            if h.residency(model) == worker_pb2.RESIDENCY_STATE_WARM
        ]

    def infos(self) -> list[router_pb2.WorkerInfo]:
        return [h.info() for h in self.workers]

    async def _follow(self, handle: WorkerHandle) -> None:
        """Keep `handle.status` current from WatchStatus, reconnecting with backoff."""
        delay = WATCH_BACKOFF_S[0]
        while True:
            try:
                await self._watch_once(handle)
                handle.last_error = "status stream ended"
            except grpc.aio.AioRpcError as err:
                handle.last_error = f"{err.code().name}: {err.details()}"
            except TimeoutError:
                handle.last_error = "status stream went silent"
            if handle.watching:
                log.warning("lost status of worker %s: %s", handle.name, handle.last_error)
                delay = WATCH_BACKOFF_S[0]
            else:
                log.debug("worker %s not watchable yet: %s", handle.address, handle.last_error)
            handle.watching = False
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, WATCH_BACKOFF_S[1])

    async def _watch_once(self, handle: WorkerHandle) -> None:
        interval = duration_pb2.Duration()
        interval.FromMilliseconds(int(self._heartbeat_s * 1000))
        call = handle.stub.WatchStatus(
            worker_pb2.WatchStatusRequest(heartbeat_interval=interval),
            wait_for_ready=False,
            metadata=handle.auth,
        )
        try:
            while True:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancel that races the read, and close() would then wait forever.
                async with asyncio.timeout(self._heartbeat_s * STALE_AFTER_HEARTBEATS):
                    reply = await call.read()
                if reply is grpc.aio.EOF:
                    return
                if not handle.watching:
                    log.info(
                        "worker %s (%s) is up: %d model(s) known",
                        reply.status.worker_id,
                        handle.address,
                        len(reply.status.models),
                    )
                handle.set_status(reply.status)
                handle.watching = True
        finally:
            call.cancel()


def prefix_sets_of(status: worker_pb2.WorkerStatus) -> dict[ModelKey, frozenset[int]]:
    """Each model's published prefix hashes; a summary in another scheme (or none) is
    left out, so the router falls back to its own routing history for that model."""
    return {
        model_key(m.name, m.version): frozenset(m.prefix_cache.link_hashes)
        for m in status.models
        if m.prefix_cache.scheme == PREFIX_SCHEME
    }


def residencies_of(
    status: worker_pb2.WorkerStatus,
) -> dict[ModelKey, worker_pb2.ResidencyState.ValueType]:
    """Each listed model's residency; the first listing wins, as the scan it replaced did."""
    out: dict[ModelKey, worker_pb2.ResidencyState.ValueType] = {}
    for m in status.models:
        out.setdefault(model_key(m.name, m.version), m.state)
    return out


def plaintext_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def _new_handle(
    address: str,
    connect: Callable[[str], grpc.aio.Channel],
    index: WorkerIndex,
    auth: Metadata = (),
) -> WorkerHandle:
    channel = connect(address)
    # The stub factory's overload cannot tell that this channel is async.
    stub = worker_pb2_grpc.WorkerServiceStub(channel)
    return WorkerHandle(
        address,
        channel,
        cast("worker_pb2_grpc.WorkerServiceAsyncStub", stub),
        index=index,
        auth=auth,
    )
