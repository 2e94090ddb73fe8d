"""Milestones of one generation on the worker: its clock (queue, load, TTFT, decode) and
its spans (worker.queue -> engine.prefill -> engine.decode)."""

from __future__ import annotations

import asyncio
import logging
import time

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from modelyard.genai import (
    operation_name,
    request_attributes,
    response_attributes,
    sampling_attributes,
)
from modelyard.refs import ModelKey
from modelyard.v1 import common_pb2, worker_pb2
from worker.engines.base import Finished
from worker.residency import Lease

tracer = trace.get_tracer("modelyard.worker")
log = logging.getLogger("worker.service")


class Clock:
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


class Spans:
    """The GenAI inference span `{operation} {model}` (a child of the RPC's span) and, under
    it, worker.queue → engine.prefill → engine.decode."""

    def __init__(self, name: str, attributes: dict[str, AttributeValue]) -> None:
        self.generation: trace.Span | None = tracer.start_span(name, attributes=attributes)
        self._parent = trace.set_span_in_context(self.generation, otel_context.get_current())
        self._attributes = attributes
        self.queue: trace.Span | None = self._start("worker.queue")
        self.prefill: trace.Span | None = None
        self.decode: trace.Span | None = None

    def _start(self, name: str) -> trace.Span:
        return tracer.start_span(name, context=self._parent, attributes=self._attributes)

    def set_engine(self, engine_name: str) -> None:
        # The engine is no GenAI provider (and gen_ai.system is deprecated): our own key.
        self._attributes["modelyard.engine"] = engine_name
        if self.generation is not None:
            self.generation.set_attribute("modelyard.engine", engine_name)

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
        for span in (self.decode, self.prefill, self.generation, trace.get_current_span()):
            if span is not None:
                span.set_attributes(attributes)

    def close(self, error: BaseException | None = None) -> None:
        # A client going away is not a server error: mark it, do not fail the span.
        cancelled = isinstance(error, (asyncio.CancelledError, GeneratorExit))
        for name in ("queue", "prefill", "decode", "generation"):
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


def log_finished(
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


def span_attributes(
    request: worker_pb2.WorkerServiceGenerateRequest, key: ModelKey, request_id: str
) -> dict[str, AttributeValue]:
    """The request's span attributes; route and arm as the router sent them, for tracing only."""
    attributes: dict[str, AttributeValue] = {
        **request_attributes(operation_name(bool(request.messages)), key),
        **sampling_attributes(request.sampling),
        **response_attributes(key, request_id),
        "modelyard.request_id": request_id,
    }
    if request.route:
        attributes["modelyard.route"] = request.route
    if request.arm:
        attributes["modelyard.arm"] = request.arm
    return attributes
