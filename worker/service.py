"""WorkerService over gRPC: translates messages to the model manager and engines and back.

Nothing here decides residency or decodes; it validates, resolves the model's
`name@version` through the catalogue (the request's copy of the model is never
loaded: only its name and version are read), holds a lease for the request, relays
the engine's stream as events, and measures timings, spans and cost on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from google.protobuf import duration_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from modelyard.errors import InvalidArgument, grpc_errors
from modelyard.pricing import cost_of
from modelyard.refs import ModelKey, key_of, model_key
from modelyard.tokens import estimate_prompt_tokens, max_tokens_of
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from modelyard.validation import check_generation
from worker.admission import within
from worker.catalogue import Catalogue
from worker.engines.base import (
    ChatTurn,
    EngineEvent,
    EngineRequest,
    Finished,
    FinishReason,
    Piece,
    SamplingConfig,
    Scheduled,
)
from worker.residency import Lease, ModelManager
from worker.status import WorkerIdentity, build_worker_status, model_status

log = logging.getLogger(__name__)
tracer = trace.get_tracer("modelyard.worker")

DEFAULT_HEARTBEAT_S = 5.0
MIN_HEARTBEAT_S = 0.05


FINISH_REASONS = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: common_pb2.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CONTEXT_LENGTH: common_pb2.FINISH_REASON_CONTEXT_LENGTH,
    FinishReason.CANCELLED: common_pb2.FINISH_REASON_CANCELLED,
}


def checked_key(model: model_pb2.Model) -> ModelKey:
    """The model's key, once its name and version are checked: the one validation, here at
    the boundary; the manager and everything behind it trust the key."""
    missing = [f for f in ("name", "version") if not getattr(model, f)]
    if missing:
        raise InvalidArgument.for_field(
            "model", f"the full model version is required; missing {' and '.join(missing)}"
        )
    return key_of(model)


def engine_request(request: worker_pb2.WorkerServiceGenerateRequest) -> EngineRequest:
    """The engine's view of a request, with the contract's defaults filled in."""
    s = request.sampling
    return EngineRequest(
        # Our own handle: a client reusing request ids must never abort another call.
        request_id=uuid.uuid4().hex,
        prompt=request.prompt,
        messages=tuple(ChatTurn(m.role, m.content, m.name) for m in request.messages),
        sampling=SamplingConfig(
            temperature=s.temperature if s.HasField("temperature") else 1.0,
            top_p=s.top_p if s.HasField("top_p") else 1.0,
            top_k=s.top_k,
            min_p=s.min_p,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
            seed=s.seed if s.HasField("seed") else None,
        ),
        max_tokens=max_tokens_of(s),
        stop=tuple(s.stop),
    )


def queued_tokens(request: worker_pb2.WorkerServiceGenerateRequest, max_tokens: int) -> int:
    """What the request costs the queue: estimated prompt tokens + max_tokens."""
    return estimate_prompt_tokens(request.prompt, request.messages) + max_tokens


def seconds_of(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


class _Clock:
    """Milestones of one generation on the monotonic clock, and the Timings they give."""

    def __init__(self) -> None:
        self.received = time.monotonic()
        self.scheduled = 0.0
        self.first_token = 0.0
        self.last_token = 0.0

    def tokens_arrived(self) -> bool:
        """Tokens came now; True when they are the first."""
        self.last_token = time.monotonic()
        if self.first_token:
            return False
        self.first_token = self.last_token
        return True

    def timings(self, load_ms: float, output_tokens: int) -> common_pb2.Timings:
        end = time.monotonic()
        scheduled = self.scheduled or end
        first = self.first_token or end
        decode_s = max(self.last_token - self.first_token, 0.0) if self.first_token else 0.0
        return common_pb2.Timings(
            queue_ms=max((scheduled - self.received) * 1000 - load_ms, 0.0),
            load_ms=load_ms,
            ttft_ms=(first - self.received) * 1000,
            decode_ms=decode_s * 1000,
            total_ms=(end - self.received) * 1000,
            decode_tokens_per_second=(output_tokens - 1) / decode_s if decode_s > 0 else 0.0,
        )


class _Spans:
    """worker.queue → engine.prefill → engine.decode, each a child of the RPC's span."""

    def __init__(self, attributes: dict[str, AttributeValue]) -> None:
        self._parent = otel_context.get_current()
        self._attributes = attributes
        self.queue: trace.Span | None = self._start("worker.queue")
        self.prefill: trace.Span | None = None
        self.decode: trace.Span | None = None

    def _start(self, name: str) -> trace.Span:
        return tracer.start_span(name, context=self._parent, attributes=self._attributes)

    def set_system(self, engine_name: str) -> None:
        self._attributes["gen_ai.system"] = engine_name

    def scheduled(self, input_tokens: int) -> None:
        self._end("queue")
        self._attributes["gen_ai.usage.input_tokens"] = input_tokens
        self.prefill = self._start("engine.prefill")

    def first_token(self) -> None:
        self._end("prefill")
        self.decode = self._start("engine.decode")

    def finished(self, event: Finished) -> None:
        attributes: dict[str, AttributeValue] = {
            "gen_ai.usage.input_tokens": event.input_tokens,
            "gen_ai.usage.output_tokens": event.output_tokens,
            "gen_ai.response.finish_reasons": [event.reason.value],
        }
        for span in (self.decode, self.prefill, trace.get_current_span()):
            if span is not None:
                span.set_attributes(attributes)

    def close(self, error: BaseException | None = None) -> None:
        # A client going away is not a server error: mark it, do not fail the span.
        cancelled = isinstance(error, (asyncio.CancelledError, GeneratorExit))
        for name in ("queue", "prefill", "decode"):
            span = getattr(self, name)
            if span is not None and cancelled:
                span.set_attribute("modelyard.cancelled", True)
            elif span is not None and error is not None:
                span.record_exception(error)
                span.set_status(trace.StatusCode.ERROR, str(error))
            self._end(name)

    def _end(self, name: str) -> None:
        span = getattr(self, name)
        if span is not None:
            span.end()
            setattr(self, name, None)


def _log_finished(
    request_id: str, lease: Lease, event: Finished, finished: common_pb2.GenerationFinished
) -> None:
    log.debug(
        "%s on %s: %d prompt + %d output tokens, %s, ttft %.0f ms, %.1f tok/s",
        request_id or "-",
        lease.resident.key,
        finished.usage.input_tokens,
        finished.usage.output_tokens,
        event.reason.value,
        finished.timings.ttft_ms,
        finished.timings.decode_tokens_per_second,
    )


def _span_attributes(
    request: worker_pb2.WorkerServiceGenerateRequest, key: ModelKey, request_id: str
) -> dict[str, AttributeValue]:
    """The request's span attributes; route and arm as the router sent them, for tracing only."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.request.model": key,
        "modelyard.request_id": request_id,
    }
    if request.route:
        attributes["modelyard.route"] = request.route
    if request.arm:
        attributes["modelyard.arm"] = request.arm
    return attributes


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(
        self, manager: ModelManager, identity: WorkerIdentity, catalogue: Catalogue
    ) -> None:
        self._manager = manager
        self.identity = identity
        self._catalogue = catalogue

    @grpc_errors
    async def Generate(
        self,
        request: worker_pb2.WorkerServiceGenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[worker_pb2.WorkerServiceGenerateResponse]:
        clock = _Clock()
        key = checked_key(request.model)
        check_generation(request.prompt, request.messages, request.sampling)
        remaining = context.time_remaining()
        deadline = clock.received + remaining if remaining is not None else None
        req = engine_request(request)
        request_id = request.request_id or req.request_id
        spans = _Spans(_span_attributes(request, key, request_id))
        error: BaseException | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                with trace.use_span(spans.queue or trace.INVALID_SPAN, end_on_exit=False):
                    # Before anything is fetched: NOT_FOUND, archived, registry unreachable.
                    model = await within(deadline, self._catalogue.resolve(key), f"resolving {key}")
                    lease = await stack.enter_async_context(
                        self._manager.acquire(
                            model,
                            load_if_cold=request.load_if_cold,
                            priority=request.priority,
                            tokens=queued_tokens(request, req.max_tokens),
                            deadline=deadline,
                        )
                    )
                # Cancellation reaches the decode thread at once, not when the stream unwinds.
                context.add_done_callback(lambda _: lease.engine.abort(req.request_id))
                yield self._started(request, request_id, lease)
                stream = lease.engine.generate(req)
                stack.push_async_callback(stream.aclose)
                async for message in self._relay(stream, lease, request, clock, spans, deadline):
                    yield message
        except BaseException as err:
            error = err
            raise
        finally:
            spans.close(error)

    async def _relay(
        self,
        stream: AsyncGenerator[EngineEvent, None],
        lease: Lease,
        request: worker_pb2.WorkerServiceGenerateRequest,
        clock: _Clock,
        spans: _Spans,
        deadline: float | None,
    ) -> AsyncIterator[worker_pb2.WorkerServiceGenerateResponse]:
        streamed = 0
        spans.set_system(lease.engine.name)
        while True:
            doing = "decoding" if clock.first_token else "waiting in the queue"
            try:
                event = await within(deadline, anext(stream), doing)
            except StopAsyncIteration:
                return
            if isinstance(event, Scheduled):
                clock.scheduled = time.monotonic()
                spans.scheduled(event.input_tokens)
            elif isinstance(event, Piece):
                if event.token_ids and clock.tokens_arrived():
                    spans.first_token()
                streamed += len(event.token_ids)
                if event.text or event.token_ids:
                    yield worker_pb2.WorkerServiceGenerateResponse(
                        delta=common_pb2.TokenDelta(text=event.text, token_ids=event.token_ids)
                    )
            else:
                spans.finished(event)
                finished = self._finished(event, streamed, lease, clock)
                _log_finished(request.request_id, lease, event, finished)
                yield worker_pb2.WorkerServiceGenerateResponse(finished=finished)
                return

    def _started(
        self, request: worker_pb2.WorkerServiceGenerateRequest, request_id: str, lease: Lease
    ) -> worker_pb2.WorkerServiceGenerateResponse:
        # Route, arm and attempt are the router's to report: it fills them in itself.
        return worker_pb2.WorkerServiceGenerateResponse(
            started=common_pb2.GenerationStarted(
                request_id=request_id,
                model=request.model.name,
                version=request.model.version,
                worker_id=self.identity.worker_id,
                engine=lease.resident.engine_kind,
                cold_start=lease.cold_start,
            )
        )

    @staticmethod
    def _finished(
        event: Finished, streamed: int, lease: Lease, clock: _Clock
    ) -> common_pb2.GenerationFinished:
        # Usage counts what was streamed, which is what the contract promises.
        usage = common_pb2.Usage(input_tokens=event.input_tokens, output_tokens=streamed)
        return common_pb2.GenerationFinished(
            finish_reason=FINISH_REASONS[event.reason],
            stop_sequence=event.stop_sequence,
            usage=usage,
            timings=clock.timings(lease.load_ms, streamed),
            cost=cost_of(lease.resident.model.pricing, usage),  # the catalogue's prices
        )

    @grpc_errors
    async def LoadModel(
        self, request: worker_pb2.LoadModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> worker_pb2.LoadModelResponse:
        model = await self._catalogue.resolve(checked_key(request.model))
        keep_alive = seconds_of(request.keep_alive) if request.HasField("keep_alive") else None
        result = await self._manager.load(
            model, request.engine, pin=request.pin, keep_alive_s=keep_alive
        )
        return worker_pb2.LoadModelResponse(
            model=model_status(result.resident),
            loaded=result.loaded,
            load_ms=result.load_ms,
        )

    @grpc_errors
    async def UnloadModel(
        self, request: worker_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> worker_pb2.UnloadModelResponse:
        if not request.name or not request.version:
            raise InvalidArgument.for_field("name", "name and version are both required")
        result = await self._manager.unload(
            model_key(request.name, request.version), seconds_of(request.grace_period)
        )
        return worker_pb2.UnloadModelResponse(
            cancelled_requests=result.cancelled_requests, freed_bytes=result.freed_bytes
        )

    @grpc_errors
    async def GetStatus(
        self, request: worker_pb2.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> worker_pb2.GetStatusResponse:
        return worker_pb2.GetStatusResponse(status=self._status())

    @grpc_errors
    async def WatchStatus(
        self, request: worker_pb2.WatchStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[worker_pb2.WatchStatusResponse]:
        heartbeat = DEFAULT_HEARTBEAT_S
        if request.HasField("heartbeat_interval"):
            heartbeat = seconds_of(request.heartbeat_interval)
            if heartbeat <= 0:
                raise InvalidArgument.for_field("heartbeat_interval", "must be positive")
            heartbeat = max(heartbeat, MIN_HEARTBEAT_S)
        notifier = self._manager.notifier
        version = notifier.version
        yield worker_pb2.WatchStatusResponse(status=self._status())
        while not notifier.closed:
            version = await notifier.wait(version, heartbeat)
            yield worker_pb2.WatchStatusResponse(status=self._status())

    def _status(self) -> worker_pb2.WorkerStatus:
        return build_worker_status(self.identity, self._manager)
