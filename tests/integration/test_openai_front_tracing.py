"""The OpenAI front on a real mesh (registry, worker, router as processes, real SmolLM2)
set to trace over real OTLP and to ignore unknown parameters: an incoming `traceparent`
continues through the front's server span into the router's span and on to the worker;
ignored parameters are named in a response header."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from modelyard.genai import span_name
from modelyard.local_mesh import LocalMesh
from modelyard.v1 import model_pb2
from tests.integration.conftest import register
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.integration

# A caller's trace: its ids must reappear in the router's and the worker's spans.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
WORKER_RPC = "/modelyard.v1.WorkerService/Generate"
SPANS_TIMEOUT_S = 60.0  # spans arrive in batches as they end; a loaded machine is slow
IGNORED_HEADER = "x-modelyard-ignored-params"


@pytest.fixture(scope="module")
def traced_mesh(
    tmp_path_factory: pytest.TempPathFactory, smollm2: model_pb2.Model
) -> Iterator[tuple[OtlpReceiver, openai.OpenAI]]:
    receiver = OtlpReceiver()
    receiver.start()
    mesh = LocalMesh(
        data_dir=Path(tmp_path_factory.mktemp("openai-traced")),
        worker_threads=2,
        router_http_port=0,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "MODELYARD_ROUTER_HTTP_IGNORE_UNKNOWN_PARAMS": "true",
        },
    )
    try:
        mesh.start()
        register(mesh.registry_address, smollm2)
        base = f"http://{mesh.router_http_address}/v1"
        yield receiver, openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
    finally:
        mesh.stop()
        receiver.stop()


def _ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


def test_an_incoming_traceparent_continues_into_the_router_and_worker_spans(
    traced_mesh: tuple[OtlpReceiver, openai.OpenAI], smollm2: model_pb2.Model
) -> None:
    receiver, client = traced_mesh
    route_span = span_name("chat", smollm2.name)  # the router's GenAI span for this request
    reply = client.chat.completions.create(
        model=smollm2.name,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=4,
        extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
    )
    assert reply.choices[0].finish_reason in ("stop", "length")

    def ours(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.trace_id == TRACE_ID]

    def rooted(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> bool:
        """`span` descends from the caller's span (every link between them received)."""
        chain = [span, *_ancestors(span, by_id)]
        return chain[-1].parent_span_id == PARENT_ID

    def complete(spans: list[ReceivedSpan]) -> bool:
        # Spans arrive in batches as they end: wait for both whole chains.
        by_id = {s.span_id: s for s in ours(spans)}
        return all(
            any((s.service, s.name) == wanted and rooted(s, by_id) for s in by_id.values())
            for wanted in (("modelyard-router", route_span), ("modelyard-worker", WORKER_RPC))
        )

    spans = ours(receiver.wait_for(complete, timeout_s=SPANS_TIMEOUT_S))
    assert complete(spans), sorted((s.service, s.name, s.parent_span_id) for s in spans)
    by_id = {s.span_id: s for s in spans}
    route = next(s for s in spans if s.name == route_span)
    assert route.service == "modelyard-router"
    # The router's span descends from the front's HTTP server span, whose parent is the
    # caller's span: the trace the caller started, not a new one.
    server = _ancestors(route, by_id)[-1]
    assert server.service == "modelyard-router" and server.parent_span_id == PARENT_ID
    assert server.name == "POST /v1/chat/completions"
    worker = next(s for s in spans if s.name == WORKER_RPC and s.service == "modelyard-worker")
    assert server in _ancestors(worker, by_id)


def test_ignored_parameters_are_served_and_listed(
    traced_mesh: tuple[OtlpReceiver, openai.OpenAI], smollm2: model_pb2.Model
) -> None:
    _, client = traced_mesh
    raw = client.chat.completions.with_raw_response.create(
        model=smollm2.name,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=2,
        extra_body={"guided_decoding_backend": "xgrammar", "mirostat": 2},
    )
    assert raw.headers[IGNORED_HEADER] == "guided_decoding_backend,mirostat"
    assert raw.parse().choices[0].finish_reason in ("stop", "length")
    # Still refused, ignored or not: a known parameter modelyard cannot honour.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=smollm2.name,
            messages=[{"role": "user", "content": "Hello"}],
            modalities=["text", "audio"],
        )
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "modalities"
