"""The metadata and client span of the router's calls to its workers.

The worker channels carry no interceptors: grpc.aio runs an intercepted call through a
task of its own and hands each streamed message through one async generator more per
interceptor (with the tracing and bearer interceptors, 9% of the router's py-spy samples
under the mesh bench's load passed through them, ~3% in their own frames). Each call
states its metadata instead: the worker API key, and the trace context of a CLIENT span
shaped like the one OpenTelemetry's interceptor made (same name and rpc.* attributes), so
a worker's spans still descend from the router's.
"""

from __future__ import annotations

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

SERVICE = "modelyard.v1.WorkerService"
Metadata = tuple[tuple[str, str], ...]

tracer = trace.get_tracer("modelyard.router")


def start_call(method: str, address: str, auth: Metadata) -> tuple[trace.Span, Metadata]:
    """A CLIENT span for `WorkerService/<method>` under the current span, and the call's
    metadata: `auth` plus that span's trace context. End the span with `end_call`."""
    span = tracer.start_span(
        f"/{SERVICE}/{method}",
        kind=SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": SERVICE,
            "rpc.method": method,
            "server.address": address,
        },
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return span, (*auth, *carrier.items())


def end_call(span: trace.Span, code: grpc.StatusCode) -> None:
    """The call's status code on its span (never the worker's message: it may name
    paths), then the span's end."""
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()
