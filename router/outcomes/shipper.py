"""The outcome buffer and the task that ships it to the registry.

`add` never blocks nor waits: it appends to a bounded buffer, dropping the oldest outcome
(and counting it) when full. A background task sends batches when one is full or every
`interval_s`, keeps them while the registry is away and retries with backoff; a batch
leaves the buffer only once the registry stored it (RecordOutcomes is idempotent per
request id, so a batch sent twice counts once).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Iterator

import grpc
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from modelyard.v1 import outcomes_pb2, outcomes_pb2_grpc

log = logging.getLogger(__name__)

MAX_BATCH = 500  # the registry's limit per call
BACKOFF_MAX_S = 10.0


class OutcomeShipper:
    def __init__(
        self,
        stub: outcomes_pb2_grpc.OutcomeServiceAsyncStub,
        *,
        capacity: int = 10_000,
        batch: int = MAX_BATCH,
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
    ) -> None:
        self._stub = stub
        self._capacity = max(1, capacity)
        self._batch = max(1, min(batch, MAX_BATCH))
        self.interval_s = interval_s
        self._timeout_s = timeout_s
        self._buffer: deque[tuple[int, outcomes_pb2.Outcome]] = deque()
        self._buffered: dict[str, int] = {}  # request id -> its sequence number
        self._seq = itertools.count(1)
        self._wake = asyncio.Event()
        self._shipped = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failing = False  # the last send failed: the registry is away

    def __len__(self) -> int:
        return len(self._buffer)

    def holds(self, request_id: str) -> bool:
        return request_id in self._buffered

    def add(self, outcome: outcomes_pb2.Outcome) -> None:
        seq = next(self._seq)
        self._buffer.append((seq, outcome))
        self._buffered[outcome.request_id] = seq
        while len(self._buffer) > self._capacity:
            self._forget(self._buffer.popleft())
            self._drop(1)
        if len(self._buffer) >= self._batch:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outcome-shipper")

    async def flush(self, request_id: str = "", timeout_s: float = 2.0) -> bool:
        """Ship now; wait until `request_id` (or, without one, everything buffered now)
        left the buffer. False when the registry did not take it in time, at once while
        the registry is known to be away (callers then answer without it)."""
        last = next(self._seq)
        if request_id and not self.holds(request_id):
            return True
        if self.failing:
            self._wake.set()
            return False

        def done() -> bool:
            if request_id:
                return not self.holds(request_id)
            return not self._buffer or self._buffer[0][0] > last

        self._wake.set()
        async with self._shipped:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._shipped.wait_for(done), timeout_s)
            return done()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Graceful stop: ship what is buffered (within `timeout_s`), then stop the task."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        # One last try even when the registry was away: it may be back.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._buffer and await self._send_one_batch():
                    pass
        if self._buffer:
            log.warning("stopping with %d outcomes not shipped to the registry", len(self))

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff or self.interval_s)
            self._wake.clear()
            if not self._buffer:
                continue
            sent = await self._send_one_batch()
            self.failing = not sent
            backoff = 0.0 if sent else min(max(2 * backoff, self.interval_s), BACKOFF_MAX_S)
            if sent and len(self._buffer) >= self._batch:
                self._wake.set()  # more full batches wait: no pause between them

    async def _send_one_batch(self) -> bool:
        batch = list(itertools.islice(self._buffer, self._batch))
        request = outcomes_pb2.RecordOutcomesRequest(outcomes=[o for _, o in batch])
        try:
            await self._stub.RecordOutcomes(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                # Kept and retried (an operator may fix the token), but said loudly.
                log.warning(
                    "registry refused this router's outcome-writer credential "
                    "(MODELYARD_ROUTER_OUTCOME_TOKEN); %d outcomes wait",
                    len(self._buffer),
                )
                return False
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                log.debug("registry did not take outcomes (%s); retrying", err.code().name)
                return False
            # Retrying cannot help a batch the registry refuses: drop it, counted.
            log.warning("registry refused %d outcomes: %s", len(batch), err.details())
            self._drop(len(batch))
        await self._shipped_through(batch[-1][0])
        return True

    async def _shipped_through(self, last_seq: int) -> None:
        # The oldest may have been dropped meanwhile: remove by sequence, not by count.
        while self._buffer and self._buffer[0][0] <= last_seq:
            self._forget(self._buffer.popleft())
        async with self._shipped:
            self._shipped.notify_all()

    def _forget(self, entry: tuple[int, outcomes_pb2.Outcome]) -> None:
        seq, outcome = entry
        if self._buffered.get(outcome.request_id) == seq:
            del self._buffered[outcome.request_id]

    def _drop(self, count: int) -> None:
        self.dropped += count

    def collector(self) -> Collector:
        """modelyard_router_outcomes_dropped_total, for the router's metrics registry."""
        return _Dropped(self)


class _Dropped(Collector):
    def __init__(self, shipper: OutcomeShipper) -> None:
        self._shipper = shipper

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "modelyard_router_outcomes_dropped",
            "Request outcomes this router dropped before the registry stored them (its "
            "buffer was full while the registry was away): missing from mesh-wide stats.",
        )
        family.add_metric([], self._shipper.dropped)
        yield family
