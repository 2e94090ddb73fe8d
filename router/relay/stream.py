"""One committed worker stream, relayed to the client event by event.

The router owns GenerationStarted's request id, model, route, arm and attempt, and
GenerationFinished's cost and route time: it states them itself. Everything else passes
through. Worker and router events share field numbers (started = 1, delta = 2,
finished = 3 in WorkerServiceGenerateResponse and GenerateResponse), and a delta needs
nothing from the router but a count of its tokens: `StreamRelay.delta` is the one place
that reads it, so relaying deltas as raw bytes later changes that method alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import grpc

from modelyard.errors import Unavailable, from_rpc_error
from modelyard.pricing import cost_of
from modelyard.v1 import common_pb2, router_pb2, worker_pb2
from router.relay.requests import Assignment
from router.relay.silence import LIVENESS, SilenceWatch, Silent

log = logging.getLogger(__name__)

WorkerEvent = worker_pb2.WorkerServiceGenerateResponse
RouterEvent = router_pb2.GenerateResponse


class StreamBroken(Unavailable):
    """The worker failed after tokens reached the client; `usage` counts what was sent."""

    def __init__(self, message: str, *, usage: common_pb2.Usage) -> None:
        super().__init__(message, reason="WORKER_FAILED_MID_STREAM")
        self.usage = usage


class StreamSilent(StreamBroken):
    """The worker went silent after tokens reached the client."""


class NoFinish(Exception):
    """The worker closed its stream without a GenerationFinished."""


async def read_head(events: AsyncIterator[WorkerEvent], watch: SilenceWatch) -> list[WorkerEvent]:
    """Events up to and including the first delta (or the finish): nothing is relayed
    before this returns, so a failure in here (`Silent` too) can still go to another
    worker."""
    head: list[WorkerEvent] = []
    while True:
        event = await watch.next(events)
        if event is None:
            raise NoFinish("stream ended before any token")
        kind = event.WhichOneof("event")
        if kind is None or kind in LIVENESS:
            continue  # alive, or an event from a newer worker: nothing to relay
        head.append(event)
        if kind in ("delta", "finished"):
            return head


async def drain(events: AsyncIterator[WorkerEvent]) -> None:
    """Read the stream to its end after the finish, so the call (and its client span) ends."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for _ in events:
            pass


def describe(err: BaseException) -> str:
    """For the log: gRPC's own words included."""
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details() or 'no details'}"
    return str(err)


# gRPC's own text for a failed call names addresses and socket errors ("failed to connect
# to all addresses; last error: ... Connection refused"): it stays in the log. A worker's
# refusals carry a rich status and are written for clients: they pass through.
_TRANSPORT = {
    grpc.StatusCode.UNAVAILABLE: "unreachable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "timed out",
    grpc.StatusCode.CANCELLED: "call cancelled",
}
_STATUS_DETAILS = "grpc-status-details-bin"


def for_client(err: BaseException) -> str:
    """What a client may read of a worker's failure."""
    if not isinstance(err, grpc.aio.AioRpcError):
        return str(err)
    code = err.code()
    if any(key == _STATUS_DETAILS for key, _ in err.trailing_metadata() or ()):
        return f"{code.name}: {err.details() or 'no details'}"
    return f"{code.name}: {_TRANSPORT.get(code, 'call failed')}"


class StreamRelay:
    """Turns one committed worker stream into the router's events."""

    def __init__(
        self, assignment: Assignment, *, worker_id: str, worker_name: str, route_ms: float
    ) -> None:
        self._assignment = assignment
        self._worker_id = worker_id  # when the worker does not name itself
        self._worker_name = worker_name  # for logs and errors
        self._route_ms = route_ms
        self.usage = common_pb2.Usage()
        self.finished = common_pb2.GenerationFinished()
        # True once an event reached the client: from then on no retry.
        self.committed = False

    async def relay(
        self, head: Sequence[WorkerEvent], events: AsyncIterator[WorkerEvent], watch: SilenceWatch
    ) -> AsyncGenerator[RouterEvent, None]:
        """The head read before committing, then the rest of the stream until the finish."""
        for held in head:
            yield self.convert(held)
        if head[-1].WhichOneof("event") == "finished":
            await drain(events)  # finished before any token (EOS first)
            return
        watch.committed = True
        while True:
            try:
                event = await watch.next(events)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise from_rpc_error(err) from err
                raise self._broken(for_client(err), logged=describe(err)) from err
            except Silent as err:
                raise self._broken(str(err), silent=True) from None
            if event is None:
                raise self._broken("stream ended without GenerationFinished")
            kind = event.WhichOneof("event")
            if kind is None or kind in LIVENESS:
                continue
            yield self.convert(event)
            if kind == "finished":
                await drain(events)
                return

    def convert(self, event: WorkerEvent) -> RouterEvent:
        self.committed = True
        kind = event.WhichOneof("event")
        if kind == "delta":
            return self.delta(event)
        if kind == "started":
            return self.started(event)
        return self.finish(event)

    def started(self, event: WorkerEvent) -> RouterEvent:
        a = self._assignment
        started = common_pb2.GenerationStarted()
        started.CopyFrom(event.started)  # engine, cold start and the worker's own id
        started.request_id = a.request_id
        started.model = a.model.name
        started.version = a.model.version
        started.route = a.route
        started.arm = a.arm
        started.attempt = a.attempt
        started.worker_id = started.worker_id or self._worker_id
        return RouterEvent(started=started)

    def delta(self, event: WorkerEvent) -> RouterEvent:
        self.usage.output_tokens += len(event.delta.token_ids)
        return RouterEvent(delta=event.delta)

    def finish(self, event: WorkerEvent) -> RouterEvent:
        finished = self.finished
        finished.CopyFrom(event.finished)
        finished.timings.route_ms = self._route_ms
        # The cost has one owner: the router, from the model's registered prices.
        finished.cost.CopyFrom(cost_of(self._assignment.model.pricing, finished.usage))
        return RouterEvent(finished=finished)

    def _broken(self, why: str, *, silent: bool = False, logged: str = "") -> StreamBroken:
        log.warning(
            "worker %s failed after %d token(s) of %s: %s",
            self._worker_name,
            self.usage.output_tokens,
            self._assignment.request_id,
            logged or why,
        )
        return (StreamSilent if silent else StreamBroken)(
            f"worker {self._worker_name} failed after {self.usage.output_tokens} token(s) "
            f"were sent ({why}); not retried, to avoid duplicating text",
            usage=self.usage,
        )
