"""The router's calls to workers carry their own metadata and client span (no channel
interceptors): the API key, the trace context of a CLIENT span under the caller's span,
and the call's code on that span, never more of the worker's words."""

from __future__ import annotations

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from modelyard.bearer import bearer_metadata
from router.worker_rpc import end_call, start_call


def test_the_call_carries_the_key_and_the_trace_context_of_its_client_span(
    spans: InMemorySpanExporter,
) -> None:
    with trace.get_tracer("test").start_as_current_span("route") as parent:
        span, metadata = start_call("Generate", "10.0.0.7:50052", bearer_metadata("k-1"))
        end_call(span, grpc.StatusCode.OK)
    entries = dict(metadata)
    assert entries["authorization"] == "Bearer k-1"
    ctx = span.get_span_context()
    # W3C traceparent: version-traceid-spanid-flags; the worker's span becomes its child.
    _, trace_id, span_id, _ = entries["traceparent"].split("-")
    assert (int(trace_id, 16), int(span_id, 16)) == (ctx.trace_id, ctx.span_id)
    done = next(s for s in spans.get_finished_spans() if s.name.endswith("/Generate"))
    assert done.name == "/modelyard.v1.WorkerService/Generate"
    assert done.kind == SpanKind.CLIENT
    assert done.parent is not None and done.parent.span_id == parent.get_span_context().span_id
    assert done.attributes is not None
    assert done.attributes["rpc.method"] == "Generate"
    assert done.attributes["rpc.grpc.status_code"] == 0
    assert done.status.status_code != StatusCode.ERROR


def test_a_failed_call_marks_its_span_with_the_code_only(spans: InMemorySpanExporter) -> None:
    span, metadata = start_call("Embed", "10.0.0.7:50052", ())
    assert all(key != "authorization" for key, _ in metadata)  # no key configured: none sent
    end_call(span, grpc.StatusCode.RESOURCE_EXHAUSTED)
    (done,) = spans.get_finished_spans()
    assert done.status.status_code == StatusCode.ERROR
    assert done.status.description == "RESOURCE_EXHAUSTED"
    assert done.attributes is not None
    assert done.attributes["rpc.grpc.status_code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
