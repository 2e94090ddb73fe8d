"""A worker call the relay holds open, and the span of one routed request."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from modelyard.errors import ModelyardError
from modelyard.genai import operation_name, request_attributes, sampling_attributes, span_name
from modelyard.v1 import router_pb2
from router.worker_rpc import end_call

tracer = trace.get_tracer("modelyard.router")


@dataclass(frozen=True)
class Prefill:
    """The prompt tokens a call makes its worker evaluate, and the router's tally of them."""

    tally: Counter[str]
    tokens: int


class OpenCall:
    """A worker call this router holds open: counted in flight until closed (once), and
    its prefill counted until its first token (`prefilled`) or its close. Its client
    span (router/worker_rpc.py) ends with it, with the code `close` was given."""

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall,
        worker: str,
        in_flight: Counter[str],
        prefill: Prefill | None = None,
        span: trace.Span | None = None,
    ):
        self.call = call
        self._worker = worker
        self._in_flight = in_flight
        in_flight[worker] += 1
        self._open = True
        self._span = span
        self._prefill = prefill
        if prefill is not None and prefill.tokens > 0:
            prefill.tally[worker] += prefill.tokens
        else:
            self._prefill = None

    def prefilled(self) -> None:
        """The first token came: the worker is done with this call's prompt."""
        if self._prefill is None:
            return
        _take(self._prefill.tally, self._worker, self._prefill.tokens)
        self._prefill = None

    def close(self, code: grpc.StatusCode = grpc.StatusCode.CANCELLED) -> None:
        """End the call; `code`: how it ended, for its span (OK once its finish was read)."""
        if not self._open:
            return
        self._open = False
        self.call.cancel()
        self.prefilled()
        _take(self._in_flight, self._worker, 1)
        if self._span is not None:
            end_call(self._span, code)


def _take(tally: Counter[str], worker: str, n: int) -> None:
    tally[worker] -= n
    if tally[worker] <= 0:
        del tally[worker]


@contextmanager
def route_span(request: router_pb2.GenerateRequest, request_id: str) -> Iterator[trace.Span]:
    """The request's span, from arrival to the end of its stream, with its error if any."""
    operation, model = operation_name(bool(request.messages)), request.model or "auto"
    span = tracer.start_span(
        span_name(operation, model),
        attributes={
            **request_attributes(operation, model),
            **sampling_attributes(request.sampling),
            "modelyard.request_id": request_id,
        },
    )
    try:
        yield span
    except Exception as err:
        # Our own errors' messages are written for clients; anything else may carry text
        # (paths, URLs) that must not leave the process: only its type goes on the span.
        description = err.message if isinstance(err, ModelyardError) else type(err).__name__
        if not isinstance(err, ModelyardError):
            span.set_attribute("error.type", type(err).__name__)
        span.set_status(Status(StatusCode.ERROR, description))
        raise
    finally:
        span.end()
