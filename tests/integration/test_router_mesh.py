"""The router's scheduling and resilience against real processes: a registry, two
llama.cpp workers serving SmolLM2 and a router, on loopback.

The tests run in file order and the later ones break the mesh on purpose (kill -9 a
worker, freeze the other, stop the registry), so the mesh is module-scoped.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from modelyard.local_mesh import LocalMesh
from modelyard.v1 import common_pb2, model_pb2, router_pb2, router_pb2_grpc
from router.service import USAGE_METADATA_KEY
from tests.integration.conftest import register


@pytest.fixture(scope="module")
def mesh2(
    tmp_path_factory: pytest.TempPathFactory, smollm2: model_pb2.Model
) -> Iterator[LocalMesh]:
    data_dir: Path = tmp_path_factory.mktemp("mesh2")
    local = LocalMesh(
        data_dir=data_dir,
        worker_ports=(0, 0),
        worker_threads=1,
        env={"MODELYARD_ROUTER_BREAKER_FAILURES": "1", "MODELYARD_ROUTER_BREAKER_OPEN_S": "120"},
    )
    local.start()
    try:
        register(local.registry_address, smollm2)
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def stub(mesh2: LocalMesh) -> Iterator[router_pb2_grpc.RouterServiceStub]:
    with grpc.insecure_channel(mesh2.router_address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


def priced(base: model_pb2.Model, name: str, usd_per_1k: float) -> model_pb2.Model:
    model = model_pb2.Model()
    model.CopyFrom(base)
    model.name = name
    model.pricing.input_usd_per_1k_tokens = model.pricing.output_usd_per_1k_tokens = usd_per_1k
    del model.capabilities.tags[:]
    model.capabilities.tags.append("cost-test")
    return model


def ask(model: str = "", **hints: object) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model=model,
        messages=[common_pb2.ChatMessage(role="user", content="Count from one to five.")],
        sampling=common_pb2.SamplingParams(max_tokens=8, temperature=0.0),
        hints=common_pb2.RoutingHints(**hints),  # type: ignore[arg-type]
    )


def wait_for_models(stub: router_pb2_grpc.RouterServiceStub, names: set[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = stub.ListModels(router_pb2.RouterServiceListModelsRequest(), timeout=5)
        if names <= {m.model.name for m in listed.models}:
            return
        time.sleep(0.1)
    raise AssertionError(f"router never saw {names}")


def test_cost_picks_the_cheaper_model_whenever_it_meets_the_ceiling(
    mesh2: LocalMesh, stub: router_pb2_grpc.RouterServiceStub, smollm2: model_pb2.Model
) -> None:
    register(mesh2.registry_address, priced(smollm2, "smol-dear", 0.002))
    register(mesh2.registry_address, priced(smollm2, "smol-cheap", 0.0005))
    wait_for_models(stub, {"smol-dear", "smol-cheap"})  # arrives through Watch
    hints = {"objective": common_pb2.OBJECTIVE_COST, "required_tags": ["cost-test"]}
    for ceiling in (None, 0.01, 0.0005):
        extra = {} if ceiling is None else {"max_cost_per_1k_tokens": ceiling}
        reply = stub.Complete(
            router_pb2.CompleteRequest.FromString(
                ask("auto", **hints, **extra).SerializeToString()
            ),
            timeout=60,
        )
        assert reply.started.model == "smol-cheap"
        assert reply.finished.cost.total_usd > 0
    with pytest.raises(grpc.RpcError) as too_low:
        stub.Complete(
            router_pb2.CompleteRequest.FromString(
                ask("auto", **hints, max_cost_per_1k_tokens=0.0001).SerializeToString()
            ),
            timeout=30,
        )
    assert too_low.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_kill_9_mid_stream_ends_unavailable_with_usage_then_traffic_moves_on(
    mesh2: LocalMesh, stub: router_pb2_grpc.RouterServiceStub, smollm2: model_pb2.Model
) -> None:
    request = ask(smollm2.name)
    request.sampling.max_tokens = 400
    call = stub.Generate(request, timeout=120)
    victim = ""
    deltas = 0
    with pytest.raises(grpc.RpcError) as broken:
        for event in call:
            kind = event.WhichOneof("event")
            if kind == "started":
                victim = event.started.worker_id
            elif kind == "delta":
                deltas += 1
                if deltas == 3:
                    os.kill(mesh2.service(victim).process.pid, signal.SIGKILL)
    assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
    trailing = dict(call.trailing_metadata() or ())
    usage = common_pb2.Usage.FromString(trailing[USAGE_METADATA_KEY])
    assert usage.output_tokens >= 3

    for _ in range(3):
        reply = stub.Complete(
            router_pb2.CompleteRequest.FromString(ask(smollm2.name).SerializeToString()),
            timeout=60,
        )
        assert reply.started.worker_id != victim
    workers = stub.ListWorkers(router_pb2.ListWorkersRequest(), timeout=5).workers
    dead = [w for w in workers if w.worker_id == victim]
    assert dead and dead[0].breaker == router_pb2.BREAKER_STATE_OPEN


def test_a_hung_worker_honours_the_deadline(
    mesh2: LocalMesh, stub: router_pb2_grpc.RouterServiceStub, smollm2: model_pb2.Model
) -> None:
    # After the kill above one worker is left: freeze it (SIGSTOP) so it accepts
    # nothing and answers nothing.
    alive = [s for s in mesh2.services if s.name.startswith("worker") and s.process.poll() is None]
    (survivor,) = alive
    os.kill(survivor.process.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as hung:
            stub.Complete(
                router_pb2.CompleteRequest.FromString(ask(smollm2.name).SerializeToString()),
                timeout=2.0,
            )
        took = time.monotonic() - began
    finally:
        os.kill(survivor.process.pid, signal.SIGCONT)
    assert hung.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 4.0


def test_routing_continues_while_the_registry_is_down(
    mesh2: LocalMesh, stub: router_pb2_grpc.RouterServiceStub, smollm2: model_pb2.Model
) -> None:
    mesh2.service("registry").stop()
    time.sleep(0.5)
    for model in (smollm2.name, "smol-cheap", "auto"):
        reply = stub.Complete(
            router_pb2.CompleteRequest.FromString(ask(model).SerializeToString()), timeout=60
        )
        assert reply.finished.usage.output_tokens > 0
    stats = stub.GetRoutingStats(router_pb2.GetRoutingStatsRequest(), timeout=5)
    assert sum(m.traffic.requests for m in stats.models) >= 8
