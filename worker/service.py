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
from opentelemetry import trace

from modelyard.errors import InvalidArgument, grpc_errors
from modelyard.genai import (
    operation_name,
    span_name,
)
from modelyard.limits import ServerLimits
from modelyard.pricing import cost_of
from modelyard.refs import ModelKey, key_of, model_key
from modelyard.streaming import BoundedStream, CoalescingWriter
from modelyard.tokens import estimate_prompt_tokens
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from modelyard.validation import check_generation
from worker.admission import within
from worker.catalogue import Catalogue
from worker.embedding import EmbedHandler
from worker.engines.base import (
    EngineEvent,
    EngineRequest,
    Finished,
    FinishReason,
    Piece,
    SamplingConfig,
    Scheduled,
)
from worker.liveness import (
    DECODING,
    DEFAULT_KEEPALIVE_S,
    LOADING,
    PREFILL,
    QUEUED,
    Liveness,
    Phase,
    interval_of,
)
from worker.milestones import Clock, Spans, log_finished, span_attributes
from worker.outcome_reports import OutcomeReporter
from worker.output_plan import OutputPlanner
from worker.residency import Lease, ModelManager, ResidencyState
from worker.sampling_fields import logprobs_of, output_format_of, token_logprobs_pb
from worker.status import WorkerIdentity, build_worker_status, model_status
from worker.tools.plan import chat_turns, with_tools
from worker.tools.stream import with_tool_calls

log = logging.getLogger(__name__)
WorkerEvent = worker_pb2.WorkerServiceGenerateResponse
tracer = trace.get_tracer("modelyard.worker")

DEFAULT_HEARTBEAT_S = 5.0
MIN_HEARTBEAT_S = 0.05
STATUS_COALESCE_S = 0.05  # a watcher gets at most ~20 pushed statuses a second


FINISH_REASONS = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: common_pb2.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CONTEXT_LENGTH: common_pb2.FINISH_REASON_CONTEXT_LENGTH,
    FinishReason.CANCELLED: common_pb2.FINISH_REASON_CANCELLED,
    FinishReason.TOOL_CALLS: common_pb2.FINISH_REASON_TOOL_CALLS,
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


def engine_request(
    request: worker_pb2.WorkerServiceGenerateRequest, stream_interval_s: float = 0.0
) -> EngineRequest:
    """The engine's view of a request, with the contract's defaults filled in; an unset
    max_tokens is left to `OutputPlanner.plan`, once the model's context is known."""
    s = request.sampling
    return EngineRequest(
        # Our own handle: a client reusing request ids must never abort another call.
        request_id=uuid.uuid4().hex,
        prompt=request.prompt,
        messages=chat_turns(request.messages),
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
        max_tokens=s.max_tokens,
        stop=tuple(s.stop),
        output_format=output_format_of(s.response_format),
        logit_bias=dict(s.logit_bias),
        logprobs=logprobs_of(s),
        stream_interval_s=stream_interval_s,
    )


def delta_of(piece: Piece) -> common_pb2.TokenDelta:
    delta = common_pb2.TokenDelta(text=piece.text, token_ids=piece.token_ids)
    if piece.logprobs:  # per token: build nothing unless they were asked for
        delta.logprobs.extend(token_logprobs_pb(piece.logprobs))
    for c in piece.tool_calls:
        delta.tool_calls.add(index=c.index, id=c.id, name=c.name, arguments=c.arguments)
    return delta


def queued_tokens(request: worker_pb2.WorkerServiceGenerateRequest, output_tokens: int) -> int:
    """What the request costs the queue: estimated prompt tokens + max_tokens (the expected
    output when max_tokens is unset: `EngineRequest.planned_tokens`)."""
    return estimate_prompt_tokens(request.prompt, request.messages) + output_tokens


def deadline_of(context: grpc.aio.ServicerContext[Any, Any], now: float) -> float | None:
    """The call's deadline in monotonic seconds (`now` is when it was received); None
    when the client set none."""
    remaining = context.time_remaining()
    return now + remaining if remaining is not None else None


def seconds_of(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(
        self,
        manager: ModelManager,
        identity: WorkerIdentity,
        catalogue: Catalogue,
        *,
        limits: ServerLimits | None = None,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        stream_interval_s: float = 0.0,
        outputs: OutputPlanner | None = None,
        reports: OutcomeReporter | None = None,
    ) -> None:
        self._manager = manager
        self.reports = reports  # outcomes of ticketed (direct) requests, to their router
        self.outputs = outputs if outputs is not None else OutputPlanner()
        self.identity = identity
        self._catalogue = catalogue
        self._limits = limits or ServerLimits()
        self._keepalive_s = keepalive_s
        self._stream_interval_s = stream_interval_s
        self._embedder = EmbedHandler(manager, catalogue, identity.worker_id)

    @grpc_errors
    async def Embed(
        self,
        request: worker_pb2.WorkerServiceEmbedRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> worker_pb2.WorkerServiceEmbedResponse:
        key = checked_key(request.model)
        return await self._embedder.embed(key, request, deadline_of(context, time.monotonic()))

    @grpc_errors
    async def Generate(
        self,
        request: worker_pb2.WorkerServiceGenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[worker_pb2.WorkerServiceGenerateResponse]:
        # Every event goes out through `out.write` (modelyard.streaming: a yield cannot
        # time a client that stopped reading); the generator form stays for interceptors.
        clock = Clock()
        key = checked_key(request.model)
        check_generation(
            request.prompt, request.messages, request.sampling, request.tools, request.tool_choice
        )
        deadline = deadline_of(context, clock.received)
        req = engine_request(request, self._stream_interval_s)
        req, tool_parser = with_tools(req, request.tools, request.tool_choice)
        request_id = request.request_id or req.request_id
        operation = operation_name(bool(request.messages))
        spans = Spans(span_name(operation, key), span_attributes(request, key, request_id))
        out = BoundedStream(context, self._limits, "worker")
        live = Liveness(out, self._keepalive_s)
        report = self.reports.begin() if self.reports is not None else None
        error: BaseException | None = None
        try:
            async with out.bounded(), live.running(), contextlib.AsyncExitStack() as stack:
                live.phase_of = lambda: self._waiting_phase(key)
                with trace.use_span(spans.queue or trace.INVALID_SPAN, end_on_exit=False):
                    # Before anything is fetched: NOT_FOUND, archived, registry unreachable.
                    model = await within(deadline, self._catalogue.resolve(key), f"resolving {key}")
                    context_length = self._manager.loader.context_length(model)
                    req = self.outputs.plan(req, request, key, context_length)
                    lease = await stack.enter_async_context(
                        self._manager.acquire(
                            model,
                            load_if_cold=request.load_if_cold,
                            priority=request.priority,
                            tokens=queued_tokens(request, req.planned_tokens),
                            deadline=deadline,
                        )
                    )
                live.set_phase(QUEUED)
                # Cancellation reaches the decode thread at once, not when the stream unwinds.
                context.add_done_callback(lambda _: lease.engine.abort(req.request_id))
                await out.write(self._started(request, request_id, lease))
                stream = lease.engine.generate(req)
                if tool_parser is not None:
                    stream = with_tool_calls(stream, tool_parser)
                stack.push_async_callback(stream.aclose)
                relay = self._relay(stream, lease, request, clock, spans, deadline, live)
                relay = report.watch(relay) if report is not None else relay
                await CoalescingWriter[WorkerEvent](out).write_all(relay)
        except BaseException as err:
            error = err
            raise
        finally:
            spans.close(error)
            if report is not None:
                report.end(error)
        nothing: tuple[worker_pb2.WorkerServiceGenerateResponse, ...] = ()
        for event in nothing:  # an async generator that yields nothing (see above)
            yield event

    def _waiting_phase(self, key: ModelKey) -> Phase:
        resident = self._manager.get(key)
        warm = resident is not None and resident.state is ResidencyState.WARM
        return QUEUED if warm else LOADING

    async def _relay(
        self,
        stream: AsyncGenerator[EngineEvent, None],
        lease: Lease,
        request: worker_pb2.WorkerServiceGenerateRequest,
        clock: Clock,
        spans: Spans,
        deadline: float | None,
        live: Liveness,
    ) -> AsyncIterator[worker_pb2.WorkerServiceGenerateResponse]:
        streamed = 0
        spans.set_engine(lease.engine.name)
        while True:
            doing = "decoding" if clock.first_token else "waiting in the queue"
            try:
                event = await within(deadline, anext(stream), doing)
            except StopAsyncIteration:
                return
            if isinstance(event, Scheduled):
                clock.scheduled = time.monotonic()
                spans.scheduled(event.input_tokens)
                live.set_phase(PREFILL)
            elif isinstance(event, Piece):
                if event.token_ids and clock.tokens_arrived():
                    spans.first_token()
                    live.set_phase(DECODING)
                streamed += len(event.token_ids)
                if event.text or event.token_ids or event.tool_calls:
                    yield worker_pb2.WorkerServiceGenerateResponse(delta=delta_of(event))
            else:
                spans.finished(event)
                self.outputs.finished(request, lease.resident.key, event)
                finished = self._finished(event, streamed, lease, clock)
                log_finished(request.request_id, lease, event, finished)
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
        event: Finished, streamed: int, lease: Lease, clock: Clock
    ) -> common_pb2.GenerationFinished:
        # Usage counts what was streamed, which is what the contract promises.
        usage = common_pb2.Usage(
            input_tokens=event.input_tokens,
            output_tokens=streamed,
            cached_input_tokens=event.cached_input_tokens,
        )
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
            # Changes within the next moment go out together: at hundreds of requests a
            # second each start and finish would otherwise cost every watcher a whole
            # status. Routers count their own open streams, so the lag costs no balance.
            await asyncio.sleep(STATUS_COALESCE_S)

    def _status(self) -> worker_pb2.WorkerStatus:
        status = build_worker_status(self.identity, self._manager)
        # Routers time this worker's silences only once they know it sends keepalives.
        status.generate_keepalive_interval.CopyFrom(interval_of(self._keepalive_s))
        return status
