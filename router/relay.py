"""Forward one generation to a worker and relay its stream back, event by event.

Rules: the caller's deadline travels to the worker, cancelling the relay cancels
the worker call, a worker that is unreachable (or fails) before the first token
is replaced by the next candidate, and a failure after it ends the stream with
UNAVAILABLE: text already sent is never sent twice. The worker's
GenerationStarted is held back until its first token (or its finish), so a
retried request still shows the client exactly one GenerationStarted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing

import grpc
from opentelemetry import trace

from modelyard.errors import DeadlineExceeded, InvalidArgument, Unavailable, from_rpc_error
from modelyard.v1 import common_pb2, model_pb2, router_pb2, worker_pb2
from router.catalog import Catalog, label
from router.workers import CandidatePicker, WorkerHandle, WorkerPool

log = logging.getLogger(__name__)
tracer = trace.get_tracer("modelyard.router")

MAX_REQUEST_ID_LENGTH = 128


def request_id_of(given: str) -> str:
    """The client's request id, or a fresh one; INVALID_ARGUMENT when too long."""
    if len(given) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument.for_field(
            "request_id", f"at most {MAX_REQUEST_ID_LENGTH} characters, got {len(given)}"
        )
    return given or uuid.uuid4().hex


class StreamBroken(Unavailable):
    """The worker failed after tokens reached the client; `usage` counts what was sent."""

    def __init__(self, message: str, *, usage: common_pb2.Usage) -> None:
        super().__init__(message, reason="WORKER_FAILED_MID_STREAM")
        self.usage = usage


class _NoFinish(Exception):
    """The worker closed its stream without a GenerationFinished."""


def worker_request(
    request: router_pb2.GenerateRequest, model: model_pb2.Model, request_id: str, attempt: int
) -> worker_pb2.WorkerServiceGenerateRequest:
    return worker_pb2.WorkerServiceGenerateRequest(
        request_id=request_id,
        model=model,
        prompt=request.prompt,
        messages=request.messages,
        sampling=request.sampling,
        priority=request.priority,
        load_if_cold=True,
        attempt=attempt,
    )


class Relay:
    """Runs one generation: resolve the model, order the workers, stream from the first
    that answers."""

    def __init__(
        self,
        catalog: Catalog,
        pool: WorkerPool,
        picker: CandidatePicker,
        *,
        max_attempts: int = 3,
        connect_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._catalog = catalog
        self._pool = pool
        self._picker = picker
        self._max_attempts = max_attempts
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock

    async def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        """Stream the generation; `timeout_s` is what is left of the caller's deadline."""
        started_at = self._clock()
        deadline = None if timeout_s is None else started_at + timeout_s
        request_id = request_id_of(request.request_id)
        with tracer.start_as_current_span(
            "router.route",
            attributes={
                "gen_ai.request.model": request.model or "auto",
                "modelyard.request_id": request_id,
            },
        ) as span:
            model = await self._catalog.resolve(
                request.model,
                chat=bool(request.messages),
                hints=request.hints,
                timeout_s=self._left(deadline),
            )
            span.set_attribute("modelyard.model", label(model))
            candidates = self._picker.order(model, self._pool.workers)[: self._max_attempts]
            if not candidates:
                raise Unavailable(
                    "the router has no workers; start it with --worker host:port",
                    reason="NO_WORKERS",
                )
            failures: list[str] = []
            for attempt, handle in enumerate(candidates, start=1):
                left = self._check_deadline(deadline, model, failures)
                connect_s = min(self._connect_timeout_s, math.inf if left is None else left)
                try:
                    await handle.connect(connect_s)
                except TimeoutError:
                    failures.append(f"{handle.address} (not reachable within {connect_s:.1f}s)")
                    log.warning("worker %s not reachable for %s", handle.address, request_id)
                    continue
                route_ms = (self._clock() - started_at) * 1000
                call = handle.stub.Generate(
                    worker_request(request, model, request_id, attempt),
                    timeout=self._left(deadline),
                    wait_for_ready=False,
                )
                try:
                    try:
                        # Iterate (not call.read()): the OpenTelemetry client interceptor
                        # ends its span only when the response iterator is exhausted.
                        events = aiter(call)
                        head = await _read_until_first_token(events)
                    except (grpc.aio.AioRpcError, _NoFinish) as err:
                        if isinstance(err, grpc.aio.AioRpcError) and (
                            err.code() != grpc.StatusCode.UNAVAILABLE
                        ):
                            raise from_rpc_error(err) from err
                        failures.append(f"{handle.address} ({_describe(err)})")
                        log.warning(
                            "worker %s failed before the first token of %s: %s",
                            handle.name,
                            request_id,
                            _describe(err),
                        )
                        continue
                    span.set_attribute("modelyard.worker", handle.worker_id or handle.address)
                    span.set_attribute("modelyard.attempt", attempt)
                    relay = _StreamRelay(handle, request_id, attempt, route_ms)
                    for event in head:
                        yield relay.convert(event)
                    if head[-1].WhichOneof("event") == "finished":
                        await _drain(events)
                        return  # finished before any token (e.g. EOS first)
                    async with aclosing(relay.rest(events)) as rest:
                        async for out in rest:
                            yield out
                    return
                finally:
                    call.cancel()
            # A connect wait cut short by the caller's deadline is a deadline, not an outage.
            self._check_deadline(deadline, model, failures)
            raise Unavailable(
                f"no worker could serve {label(model)}: " + "; ".join(failures),
                reason="NO_WORKER_AVAILABLE",
                metadata={"workers": ",".join(h.address for h in candidates)},
            )

    def _check_deadline(
        self, deadline: float | None, model: model_pb2.Model, failures: list[str]
    ) -> float | None:
        """The seconds left, or DEADLINE_EXCEEDED once there are none."""
        left = self._left(deadline)
        if left is not None and left <= 0:
            raise DeadlineExceeded(
                f"deadline passed while routing {label(model)}; tried "
                + ("; ".join(failures) or "no worker")
            )
        return left

    def _left(self, deadline: float | None) -> float | None:
        return None if deadline is None else deadline - self._clock()


async def _read_until_first_token(
    events: AsyncIterator[worker_pb2.WorkerServiceGenerateResponse],
) -> list[worker_pb2.WorkerServiceGenerateResponse]:
    """Events up to and including the first delta (or the finish): nothing is relayed
    before this returns, so a failure in here can still go to another worker."""
    head: list[worker_pb2.WorkerServiceGenerateResponse] = []
    while True:
        event = await anext(events, None)
        if event is None:
            raise _NoFinish("stream ended before any token")
        kind = event.WhichOneof("event")
        if kind is None:
            continue  # an empty event from a newer worker: nothing to relay
        head.append(event)
        if kind in ("delta", "finished"):
            return head


async def _drain(events: AsyncIterator[worker_pb2.WorkerServiceGenerateResponse]) -> None:
    """Read the stream to its end after the finish, so the call (and its client span) ends."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for _ in events:
            pass


class _StreamRelay:
    """Converts one committed worker stream's events into the router's events."""

    def __init__(self, handle: WorkerHandle, request_id: str, attempt: int, route_ms: float):
        self._handle = handle
        self._request_id = request_id
        self._attempt = attempt
        self._route_ms = route_ms
        self._usage = common_pb2.Usage()

    def convert(
        self, event: worker_pb2.WorkerServiceGenerateResponse
    ) -> router_pb2.GenerateResponse:
        kind = event.WhichOneof("event")
        if kind == "started":
            started = common_pb2.GenerationStarted()
            started.CopyFrom(event.started)
            started.request_id = self._request_id
            started.attempt = self._attempt
            if not started.worker_id:
                started.worker_id = self._handle.worker_id or self._handle.address
            return router_pb2.GenerateResponse(started=started)
        if kind == "delta":
            self._usage.output_tokens += len(event.delta.token_ids)
            return router_pb2.GenerateResponse(delta=event.delta)
        finished = common_pb2.GenerationFinished()
        finished.CopyFrom(event.finished)
        finished.timings.route_ms = self._route_ms
        return router_pb2.GenerateResponse(finished=finished)

    async def rest(
        self, events: AsyncIterator[worker_pb2.WorkerServiceGenerateResponse]
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        """The events after the first token, until the finish."""
        while True:
            try:
                event = await anext(events, None)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise from_rpc_error(err) from err
                raise self._broken(_describe(err)) from err
            if event is None:
                raise self._broken("stream ended without GenerationFinished")
            if event.WhichOneof("event") is None:
                continue
            yield self.convert(event)
            if event.WhichOneof("event") == "finished":
                await _drain(events)
                return

    def _broken(self, why: str) -> StreamBroken:
        log.warning(
            "worker %s failed after %d token(s) of %s: %s",
            self._handle.name,
            self._usage.output_tokens,
            self._request_id,
            why,
        )
        return StreamBroken(
            f"worker {self._handle.name} failed after {self._usage.output_tokens} token(s) "
            f"were sent ({why}); not retried, to avoid duplicating text",
            usage=self._usage,
        )


def _describe(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details() or 'no details'}"
    return str(err)
