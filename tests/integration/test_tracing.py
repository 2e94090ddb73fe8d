"""One generation is one trace across router and worker, exported over real OTLP/gRPC;
the model load it triggers is a span of that trace, and the services' log lines written
while serving it carry its trace id."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from modelyard.local_mesh import LocalMesh
from modelyard.v1 import common_pb2, model_pb2, router_pb2, router_pb2_grpc
from tests.integration.conftest import register
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

ROUTER_RPC = "/modelyard.v1.RouterService/Generate"
WORKER_RPC = "/modelyard.v1.WorkerService/Generate"
MODEL_LOAD = "worker.model_load"
# Spans arrive in batches as they end (every 100 ms here); a loaded machine may take long.
SPANS_TIMEOUT_S = 60.0

pytestmark = pytest.mark.integration


def _ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


def test_router_and_worker_spans_share_one_trace_and_nest(
    tmp_path: Path, smollm2: model_pb2.Model
) -> None:
    receiver = OtlpReceiver()
    receiver.start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        # The router logs its scheduling decision (inside the request) at DEBUG.
        "MODELYARD_ROUTER_LOG_LEVEL": "DEBUG",
    }
    mesh = LocalMesh(data_dir=tmp_path, worker_threads=2, env=env)
    try:
        mesh.start()
        register(mesh.registry_address, smollm2)
        with grpc.insecure_channel(mesh.router_address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            events = list(
                stub.Generate(
                    router_pb2.GenerateRequest(
                        model=smollm2.name,
                        prompt="Hello",
                        request_id="trace-me",
                        sampling=common_pb2.SamplingParams(max_tokens=8, temperature=0.0),
                    ),
                    timeout=120,
                )
            )
        assert events[-1].WhichOneof("event") == "finished"

        def complete(spans: list[ReceivedSpan]) -> bool:
            # Spans arrive in batches as they end: wait for the whole chain.
            by_id = {s.span_id: s for s in spans}
            workers = [s for s in spans if s.name == WORKER_RPC]
            return (
                any(any(a.name == ROUTER_RPC for a in _ancestors(w, by_id)) for w in workers)
                and any(s.name == "engine.decode" for s in spans)
                and any(s.name == MODEL_LOAD for s in spans)
            )

        spans = receiver.wait_for(complete, timeout_s=SPANS_TIMEOUT_S)
        assert complete(spans), sorted({(s.service, s.name) for s in spans})
    finally:
        mesh.stop()  # the services flush their spans as they stop
        receiver.stop()
    _check_genai_conventions(spans, smollm2)
    _check_nothing_untraced_or_secret(receiver.spans, smollm2)

    router_span = next(s for s in spans if s.service == "modelyard-router" and s.name == ROUTER_RPC)
    trace = [s for s in spans if s.trace_id == router_span.trace_id]
    by_id = {s.span_id: s for s in trace}
    worker_span = next(s for s in trace if s.service == "modelyard-worker" and s.name == WORKER_RPC)
    # The worker's server span descends from the router's server span, through the
    # router's client span for the outgoing call.
    chain = _ancestors(worker_span, by_id)
    assert router_span in chain
    assert chain[0].service == "modelyard-router"
    decode = next(s for s in trace if s.name == "engine.decode")
    assert worker_span in _ancestors(decode, by_id)
    assert decode.attributes.get("gen_ai.request.model") == f"{smollm2.name}@{smollm2.version}"
    assert decode.attributes.get("gen_ai.usage.output_tokens") == 8
    # The worker was cold: this request's trace shows the load it waited for.
    load = next(s for s in trace if s.name == MODEL_LOAD)
    assert load.service == "modelyard-worker"
    assert worker_span in _ancestors(load, by_id)
    assert load.attributes.get("gen_ai.request.model") == f"{smollm2.name}@{smollm2.version}"

    # Log lines written while serving the request carry its trace id (and the span's id).
    for log_name in ("worker-0.log", "router.log"):
        lines = (tmp_path / "logs" / log_name).read_text(errors="replace").splitlines()
        traced = [line for line in lines if f"trace_id={router_span.trace_id} " in line]
        assert traced, f"no line of {log_name} carries trace_id={router_span.trace_id}"
        span_ids = {s.span_id for s in trace}
        assert all(line.split("span_id=", 1)[1].split("]", 1)[0] in span_ids for line in traced), (
            traced
        )


def _check_genai_conventions(spans: list[ReceivedSpan], smollm2: model_pb2.Model) -> None:
    """OpenTelemetry GenAI semantic conventions on the router's and the worker's
    generation spans: `{operation} {model}` names and the gen_ai.* attributes."""
    key = f"{smollm2.name}@{smollm2.version}"
    router = next(s for s in spans if s.name == f"text_completion {smollm2.name}")
    worker = next(s for s in spans if s.name == f"text_completion {key}")
    assert router.service == "modelyard-router" and worker.service == "modelyard-worker"
    for span, requested in ((router, smollm2.name), (worker, key)):
        a = span.attributes
        assert a["gen_ai.operation.name"] == "text_completion", span
        assert a["gen_ai.provider.name"] == "modelyard", span
        assert "gen_ai.system" not in a, span
        assert a["gen_ai.request.model"] == requested, span
        assert a["gen_ai.response.model"] == key, span
        assert a["gen_ai.response.id"] == "trace-me", span
        assert a["gen_ai.request.max_tokens"] == 8, span
        assert a["gen_ai.request.temperature"] == 0.0, span
        assert a["gen_ai.usage.output_tokens"] == 8, span
        assert a["gen_ai.usage.input_tokens"] > 0, span
    assert worker.attributes["modelyard.engine"] == "llama.cpp"


UNTRACED = ("grpc.health.v1.Health/", "RegistryService/Watch", "WorkerService/WatchStatus")


def _check_nothing_untraced_or_secret(spans: list[ReceivedSpan], smollm2: model_pb2.Model) -> None:
    """Health checks (the mesh polled them at start) and the long-lived Watch / WatchStatus
    streams (ended, so exported, when the mesh stopped) are not traced; no span attribute
    holds the artifact's URI or its local path."""
    names = {s.name for s in spans}
    assert not [n for n in names if any(u in n for u in UNTRACED)], sorted(names)
    path = smollm2.artifact.uri.removeprefix("file://")
    for span in spans:
        for value in span.attributes.values():
            assert path not in str(value), (span.name, value)
