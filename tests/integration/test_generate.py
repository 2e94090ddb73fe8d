"""Streaming through router -> worker with the real SmolLM2, all services as processes."""

from __future__ import annotations

import time

import grpc
import pytest
from llama_cpp import Llama

from modelyard.bundled import smollm2_path
from modelyard.local_mesh import LocalMesh
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    router_pb2,
    router_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

PROMPT = "The three primary colors are"


def _request(model: str, **sampling: object) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model=model,
        prompt=PROMPT,
        sampling=common_pb2.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


def _collect(
    stub: router_pb2_grpc.RouterServiceStub, request: router_pb2.GenerateRequest
) -> tuple[list[tuple[float, router_pb2.GenerateResponse]], float]:
    start = time.monotonic()
    events = [(time.monotonic() - start, e) for e in stub.Generate(request, timeout=120)]
    return events, time.monotonic() - start


def test_stream_arrives_incrementally_with_matching_usage(
    router_channel: grpc.Channel, mesh: LocalMesh, smollm2: model_pb2.Model
) -> None:
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    events: list[router_pb2.GenerateResponse] = []
    running_at_first_delta: int | None = None
    with grpc.insecure_channel(mesh.worker_addresses[0]) as worker_channel:
        worker = worker_pb2_grpc.WorkerServiceStub(worker_channel)
        for event in stub.Generate(
            _request(smollm2.name, max_tokens=48, temperature=0.0), timeout=120
        ):
            if event.WhichOneof("event") == "delta" and running_at_first_delta is None:
                # Tokens stream as decoded: the first one reaches the client while the worker
                # is still decoding the rest (a relay that buffered would deliver it after).
                status = worker.GetStatus(worker_pb2.GetStatusRequest(), timeout=10).status
                running_at_first_delta = status.running_sequences
            events.append(event)
    assert running_at_first_delta == 1
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert set(kinds[1:-1]) == {"delta"}
    started, finished = events[0].started, events[-1].finished
    assert (started.model, started.version) == (smollm2.name, smollm2.version)
    assert started.worker_id and started.request_id
    deltas = [e.delta for e in events if e.WhichOneof("event") == "delta"]
    assert len(deltas) > 10  # one message per token or so, not one block
    streamed_ids = [i for d in deltas for i in d.token_ids]
    assert finished.usage.output_tokens == len(streamed_ids) == 48
    assert finished.usage.input_tokens > 0
    assert finished.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert finished.timings.ttft_ms > 0 and finished.timings.decode_tokens_per_second > 0


def test_greedy_output_equals_llama_cpp_python(
    router_channel: grpc.Channel, smollm2: model_pb2.Model
) -> None:
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    events, _ = _collect(stub, _request(smollm2.name, max_tokens=32, temperature=0.0))
    text = "".join(e.delta.text for _, e in events if e.WhichOneof("event") == "delta")

    llama = Llama(model_path=str(smollm2_path()), n_ctx=2048, n_threads=1, verbose=False)
    reference = llama.create_completion(PROMPT, max_tokens=32, temperature=0.0)
    assert text == reference["choices"][0]["text"]  # type: ignore[index]


def test_stop_sequence_ends_stream_without_the_stop_text(
    router_channel: grpc.Channel, smollm2: model_pb2.Model
) -> None:
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    # Find greedy text first, then stop on a word inside it.
    events, _ = _collect(stub, _request(smollm2.name, max_tokens=24, temperature=0.0))
    text = "".join(e.delta.text for _, e in events if e.WhichOneof("event") == "delta")
    words = [w for w in text.split() if len(w) > 3]
    assert words, text
    stop = words[len(words) // 2]
    events, _ = _collect(stub, _request(smollm2.name, max_tokens=24, temperature=0.0, stop=[stop]))
    stopped = "".join(e.delta.text for _, e in events if e.WhichOneof("event") == "delta")
    finished = events[-1][1].finished
    assert finished.finish_reason == common_pb2.FINISH_REASON_STOP_SEQUENCE
    assert finished.stop_sequence == stop
    assert stop not in stopped
    assert text.startswith(stopped)


def test_chat_uses_the_models_template(
    router_channel: grpc.Channel, smollm2: model_pb2.Model
) -> None:
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    request = router_pb2.GenerateRequest(
        model=f"{smollm2.name}@{smollm2.version}",
        messages=[
            common_pb2.ChatMessage(role="system", content="You are a helpful assistant."),
            common_pb2.ChatMessage(
                role="user", content="What is the capital of France? Answer in one sentence."
            ),
        ],
        sampling=common_pb2.SamplingParams(max_tokens=40, temperature=0.0),
    )
    events, _ = _collect(stub, request)
    text = "".join(e.delta.text for _, e in events if e.WhichOneof("event") == "delta")
    assert "Paris" in text
    assert "<|im_start|>" not in text


def test_complete_returns_the_whole_generation(
    router_channel: grpc.Channel, smollm2: model_pb2.Model
) -> None:
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    reply = stub.Complete(
        router_pb2.CompleteRequest(
            model=smollm2.name,
            prompt=PROMPT,
            sampling=common_pb2.SamplingParams(max_tokens=16, temperature=0.0),
        ),
        timeout=120,
    )
    assert reply.finished.usage.output_tokens == len(reply.token_ids) == 16
    assert reply.text and reply.started.model == smollm2.name


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        ({"max_tokens": -1}, "sampling.max_tokens"),
        ({"temperature": -0.5}, "sampling.temperature"),
        ({"top_p": 0.0}, "sampling.top_p"),
        ({"top_p": 1.5}, "sampling.top_p"),
    ],
)
def test_invalid_sampling_is_invalid_argument_naming_the_field(
    router_channel: grpc.Channel, smollm2: model_pb2.Model, sampling: dict[str, float], field: str
) -> None:
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(_request(smollm2.name, **sampling), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")


def test_unknown_model_is_not_found(router_channel: grpc.Channel) -> None:
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(_request("no-such-model", max_tokens=4), timeout=30))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in (info.value.details() or "")


def test_health_and_reflection_on_every_service(mesh: LocalMesh) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    expected = {
        mesh.registry_address: "modelyard.v1.RegistryService",
        mesh.worker_addresses[0]: "modelyard.v1.WorkerService",
        mesh.router_address: "modelyard.v1.RouterService",
    }
    for address, service in expected.items():
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            names = {s.name for r in replies for s in r.list_services_response.service}
            assert service in names
