"""Outcomes of ticketed (direct) generations, reported to the router that issued the ticket.

A direct stream never passes through a router, so the router learns how it ended from
the worker: usage, timings, finish reason and status, with the ticket as proof of the
pick. Reports go out in the background, never in the stream's way: a bounded queue (when
full, a report is dropped and counted), a few senders that send what piled up as one
ReportOutcomes batch per router (one by one to a router without it), gathering for a short
linger first (one sender at a time, so concurrent ends share a call), and retries with
backoff while the router is unreachable. A worker dials only the routers its settings name
(MODELYARD_WORKER_OUTCOME_ROUTERS, by router id): never an address a client could choose.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeAlias, TypeVar, cast

import grpc

from modelyard.auth import current_caller
from modelyard.bearer import bearer_interceptors
from modelyard.channel_options import CHANNEL_OPTIONS
from modelyard.errors import ModelyardError
from modelyard.tickets import Claims
from modelyard.tls import TlsSettings, secure_or_insecure_channel
from modelyard.v1 import router_pb2, router_pb2_grpc, worker_pb2

log = logging.getLogger(__name__)

WorkerEvent = worker_pb2.WorkerServiceGenerateResponse
if TYPE_CHECKING:  # the async stub type exists only in the .pyi
    RouterStub: TypeAlias = router_pb2_grpc.RouterServiceAsyncStub
# Worth another try: the router is away or busy, not refusing the report.
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
MAX_BATCH = 256  # the router's limit per ReportOutcomes call
_Reply = TypeVar("_Reply")


class DirectReport:
    """One ticketed generation on its way: what its outcome report will say."""

    def __init__(self, reporter: OutcomeReporter, claims: Claims) -> None:
        self._reporter = reporter
        self._claims = claims
        self._last: WorkerEvent | None = None
        self._tokens = 0

    async def watch(self, events: AsyncIterator[WorkerEvent]) -> AsyncIterator[WorkerEvent]:
        """`events` as they are, noting the tokens sent and the last event."""
        async for event in events:
            self._last = event
            self._tokens += len(event.delta.token_ids)
            yield event

    def end(self, error: BaseException | None) -> None:
        report = router_pb2.ReportOutcomeRequest(ticket=self._claims.raw)
        last = self._last
        if last is not None and last.WhichOneof("event") == "finished":
            report.usage.CopyFrom(last.finished.usage)
            report.timings.CopyFrom(last.finished.timings)
            report.finish_reason = last.finished.finish_reason
        else:
            report.usage.output_tokens = self._tokens
        code = grpc.StatusCode.OK
        if isinstance(error, ModelyardError):
            code, report.error_reason = error.code, error.reason
        elif isinstance(error, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        elif error is not None:
            code = grpc.StatusCode.INTERNAL
        report.status_code = code.value[0]
        self._reporter.submit(self._claims, report)


class OutcomeReporter:
    def __init__(
        self,
        routers: Mapping[str, str],
        *,
        token: str = "",
        tls: TlsSettings | None = None,
        capacity: int = 1000,
        senders: int = 4,
        tries: int = 5,
        backoff_s: float = 0.2,
        timeout_s: float = 5.0,
        linger_s: float = 0.0,
    ) -> None:
        self.routers = dict(routers)
        self._token = token
        self._tls = tls
        self._capacity, self._senders = capacity, senders
        self._tries, self._backoff_s, self._timeout_s = tries, backoff_s, timeout_s
        self._linger_s = linger_s
        # One sender gathers at a time: the others wait here, not on the queue, so the
        # reports arriving during a linger join that sender's batch.
        self._gathering = asyncio.Lock()
        self._queue: asyncio.Queue[tuple[str, router_pb2.ReportOutcomeRequest]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stubs: dict[str, tuple[grpc.aio.Channel, RouterStub]] = {}
        self._one_by_one: set[str] = set()  # routers without ReportOutcomes
        self.sent = 0
        self.dropped = 0

    def begin(self) -> DirectReport | None:
        """A report for the running Generate when a ticket admitted it; else None."""
        caller = current_caller()
        if caller is None or caller.ticket is None:
            return None
        return DirectReport(self, caller.ticket)

    def submit(self, claims: Claims, report: router_pb2.ReportOutcomeRequest) -> None:
        """Queue `report` for the router `claims` name; never waits."""
        address = self.routers.get(claims.grant.router)
        if address is None:
            self.dropped += 1
            log.warning(
                "outcome of %s not reported: router %r is not in MODELYARD_WORKER_OUTCOME_ROUTERS",
                claims.request_id,
                claims.grant.router,
            )
            return
        if self._queue is None:
            self._queue = asyncio.Queue(self._capacity)
            self._tasks = [asyncio.create_task(self._send_all()) for _ in range(self._senders)]
        try:
            self._queue.put_nowait((address, report))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("outcome queue full: the outcome of %s is dropped", claims.request_id)

    async def _send_all(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch: list[tuple[str, router_pb2.ReportOutcomeRequest]] = []
            try:
                async with self._gathering:
                    batch.append(await queue.get())
                    if self._linger_s > 0 and queue.qsize() < MAX_BATCH - 1:
                        await asyncio.sleep(self._linger_s)  # streams ending meanwhile join
                    while len(batch) < MAX_BATCH and not queue.empty():
                        batch.append(queue.get_nowait())  # what piled up meanwhile
                by_address: dict[str, list[router_pb2.ReportOutcomeRequest]] = {}
                for address, report in batch:
                    by_address.setdefault(address, []).append(report)
                for address, reports in by_address.items():
                    await self._send(address, reports)
            finally:
                for _ in batch:
                    queue.task_done()

    async def _send(self, address: str, reports: list[router_pb2.ReportOutcomeRequest]) -> None:
        stub = self._stub(address)
        if len(reports) > 1 and address not in self._one_by_one:
            batch = router_pb2.ReportOutcomesRequest(reports=reports)
            try:
                reply = await self._retrying(
                    functools.partial(stub.ReportOutcomes, batch, timeout=self._timeout_s)
                )
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNIMPLEMENTED:
                    self._refused(address, len(reports), err.details())
                    return
                self._one_by_one.add(address)  # a router from before ReportOutcomes
            else:
                accepted = sum(1 for r in reply.results if r.status_code == 0)
                self.sent += accepted
                if accepted < len(reports):
                    reasons = sorted({r.reason for r in reply.results if r.status_code != 0})
                    self._refused(address, len(reports) - accepted, ", ".join(reasons))
                return
        for report in reports:
            try:
                await self._retrying(
                    functools.partial(stub.ReportOutcome, report, timeout=self._timeout_s)
                )
                self.sent += 1
            except grpc.aio.AioRpcError as err:
                self._refused(address, 1, err.details())

    async def _retrying(self, call: Callable[[], Awaitable[_Reply]]) -> _Reply:
        """`call`, again with backoff while the router is away or busy."""
        for attempt in range(self._tries - 1):
            try:
                return await call()
            except grpc.aio.AioRpcError as err:
                if err.code() not in _TRANSIENT:
                    raise
            await asyncio.sleep(self._backoff_s * 2**attempt)
        return await call()

    def _refused(self, address: str, count: int, why: str | None) -> None:
        self.dropped += count
        log.warning("%d outcome report(s) to %s refused: %s", count, address, why)

    def _stub(self, address: str) -> RouterStub:
        if address not in self._stubs:
            channel = secure_or_insecure_channel(
                address, self._tls, bearer_interceptors(self._token), CHANNEL_OPTIONS
            )
            stub = cast("RouterStub", router_pb2_grpc.RouterServiceStub(channel))
            self._stubs[address] = (channel, stub)
        return self._stubs[address][1]

    async def flush(self) -> None:
        """Wait until every queued report was sent or given up (tests, shutdown)."""
        if self._queue is not None:
            await self._queue.join()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for channel, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()
