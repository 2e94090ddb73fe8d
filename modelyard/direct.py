"""Direct streams: the router picks, the worker streams to the client itself.

`Client.generate(..., direct=True)` asks the router to pick (PickWorker: the same
admission and scheduling as Generate, one unary call), then calls the chosen worker's
Generate with the router-signed ticket as its only credential, and shows the same events
as a proxied stream: GenerationStarted (the router's fields, the worker's engine and cold
start), the deltas, GenerationFinished. The router is off the token path; the first
token comes one round trip later. A worker that fails before the first token
(UNAVAILABLE, RESOURCE_EXHAUSTED, or a stream with no token) is excluded and the router
asked again, a few times at most; after the first token nothing is retried.

The worker is dialled with the client's TLS settings, its CA and client certificate, but
never the API key: a worker is not the router and gets only the ticket. Channels to
workers are kept, a few at most, for the client's life.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from modelyard.client_connection import Connection
from modelyard.errors import RETRY_ELSEWHERE
from modelyard.tickets import TICKET_METADATA
from modelyard.v1 import common_pb2, router_pb2, worker_pb2, worker_pb2_grpc

MAX_PICKS = 3  # picks for one generation: the first and two after failed workers
MAX_CHANNELS = 8  # workers a client keeps a channel open to
_CANCELLED_HERE = "Locally cancelled by application!"  # gRPC's words for a caller's cancel
_HEAD_ENDS = frozenset({"delta", "finished"})

RouterEvent = router_pb2.GenerateResponse
WorkerEvent = worker_pb2.WorkerServiceGenerateResponse


class NoToken(grpc.RpcError):  # type: ignore[misc]
    """The worker's stream ended before its first token: try another worker."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the worker's stream ended before any token"


def convert(event: WorkerEvent, pick: router_pb2.PickWorkerResponse) -> RouterEvent | None:
    """A worker event as the router would have relayed it (None: liveness, skip)."""
    kind = event.WhichOneof("event")
    if kind == "delta":
        return RouterEvent(delta=event.delta)
    if kind == "started":
        started = common_pb2.GenerationStarted()
        started.CopyFrom(event.started)  # the engine and cold start are the worker's
        mine = pick.started  # request id, model, route, arm, attempt are the router's
        started.MergeFrom(mine)
        started.worker_id = event.started.worker_id or mine.worker_id
        return RouterEvent(started=started)
    if kind == "finished":
        return RouterEvent(finished=event.finished)
    return None


class Picks:
    """What both flavours share: the request, the workers excluded, the deadline."""

    def __init__(self, request: router_pb2.GenerateRequest, timeout_s: float) -> None:
        self.request = request
        self.exclude: list[str] = []
        self.deadline = time.monotonic() + timeout_s
        self.tries = 0

    def next_request(self) -> router_pb2.PickWorkerRequest:
        self.tries += 1
        return router_pb2.PickWorkerRequest(request=self.request, exclude_workers=self.exclude)

    def picked(self, pick: router_pb2.PickWorkerResponse) -> None:
        # Asking again names the same request: the router lets the failed pick go.
        self.request.request_id = pick.started.request_id

    def left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)

    def retry(self, err: grpc.RpcError, pick: router_pb2.PickWorkerResponse) -> bool:
        """Whether to ask again after `err` before the first token (then `pick`'s worker
        is excluded)."""
        if err.code() not in RETRY_ELSEWHERE or self.tries >= MAX_PICKS:
            return False
        if err.code() == grpc.StatusCode.CANCELLED and err.details() == _CANCELLED_HERE:
            return False
        self.exclude.append(pick.worker_address)
        return True


def _open(channels: WorkerChannels, pick: router_pb2.PickWorkerResponse, picks: Picks) -> Any:
    """The worker call: the prepared request, with the ticket as its only credential."""
    stub = channels.stub(pick.worker_address)
    ticket = ((TICKET_METADATA, pick.ticket),)
    return stub.Generate(pick.worker_request, timeout=picks.left(), metadata=ticket)


def worker_connection(router: Connection, address: str) -> Connection:
    """The router's TLS settings for a worker: no API key, no router name override,
    no gRPC retries (a ticket is good for one call)."""
    return dataclasses.replace(
        router, address=address, api_key="", tls_server_name="", retries=False
    )


class WorkerChannels:
    def __init__(self, connection: Connection, aio: bool) -> None:
        self._connection = connection
        self._aio = aio
        self._open: OrderedDict[str, tuple[Any, Any]] = OrderedDict()

    def stub(self, address: str) -> Any:
        """The worker's stub, on a channel kept for later calls (the oldest is closed
        when there are too many; a call on it ends)."""
        if address in self._open:
            self._open.move_to_end(address)
            return self._open[address][1]
        connection = worker_connection(self._connection, address)
        channel = connection.aio_channel() if self._aio else connection.channel()
        self._open[address] = (channel, worker_pb2_grpc.WorkerServiceStub(channel))
        while len(self._open) > MAX_CHANNELS:
            self._open.popitem(last=False)[1][0].close()  # aio: closes in the background
        return self._open[address][1]

    def close(self) -> list[Any]:
        """Close every channel; the aio ones' close coroutines are returned to await."""
        closing = [channel.close() for channel, _ in self._open.values()]
        self._open.clear()
        return closing


class _Call:
    """What both flavours share: the router stub, the worker channels, the picks so far,
    and the worker call in progress (to cancel)."""

    def __init__(self, router: Any, channels: WorkerChannels, picks: Picks, metadata: Any) -> None:
        self._router, self._channels, self._picks = router, channels, picks
        self._metadata = metadata
        self._call: Any = None

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()


class DirectCall(_Call):
    """A direct generation's events, as a proxied call's (`for event in call`, `cancel`)."""

    def __iter__(self) -> Iterator[RouterEvent]:
        picks = self._picks
        while True:
            pick = self._router.PickWorker(
                picks.next_request(), timeout=picks.left(), metadata=self._metadata
            )
            picks.picked(pick)
            self._call = _open(self._channels, pick, picks)
            events = (convert(e, pick) for e in self._call)
            try:
                head = _head(events)
            except grpc.RpcError as err:
                if picks.retry(err, pick):
                    continue
                raise
            yield from head
            yield from (e for e in events if e is not None)
            return


def _head(events: Iterator[RouterEvent | None]) -> list[RouterEvent]:
    head: list[RouterEvent] = []
    for event in events:
        if event is not None:
            head.append(event)
            if event.WhichOneof("event") in _HEAD_ENDS:
                return head
    raise NoToken()


class AsyncDirectCall(_Call):
    """The asyncio twin of DirectCall (`async for event in call`)."""

    async def __aiter__(self) -> AsyncIterator[RouterEvent]:
        picks = self._picks
        while True:
            pick = await self._router.PickWorker(
                picks.next_request(), timeout=picks.left(), metadata=self._metadata
            )
            picks.picked(pick)
            self._call = _open(self._channels, pick, picks)
            events = aiter(self._call)
            try:
                head = await _async_head(events, pick)
            except grpc.RpcError as err:
                if picks.retry(err, pick):
                    continue
                raise
            for held in head:
                yield held
            async for raw in events:
                if (event := convert(raw, pick)) is not None:
                    yield event
            return


async def _async_head(
    events: AsyncIterator[WorkerEvent], pick: router_pb2.PickWorkerResponse
) -> list[RouterEvent]:
    head: list[RouterEvent] = []
    async for raw in events:
        event = convert(raw, pick)
        if event is not None:
            head.append(event)
            if event.WhichOneof("event") in _HEAD_ENDS:
                return head
    raise NoToken()
