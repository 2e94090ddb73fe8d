"""The router's scheduling and resilience against real processes: a registry, llama.cpp
workers serving SmolLM2 and a router, on loopback.

Each test gets a mesh of its own (the tests break it on purpose: kill -9 a worker,
freeze one, stop the registry), so they pass alone, together and in any order.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from modelyard.local_mesh import LocalMesh
from modelyard.v1 import common_pb2, model_pb2, router_pb2, router_pb2_grpc
from router.service import USAGE_METADATA_KEY
from tests.integration.conftest import register, until

pytestmark = pytest.mark.integration


BREAK_AT_ONCE = {"MODELYARD_ROUTER_BREAKER_FAILURES": "1", "MODELYARD_ROUTER_BREAKER_OPEN_S": "120"}


def _mesh(
    tmp_path: Path, smollm2: model_pb2.Model, workers: int, env: dict[str, str] = BREAK_AT_ONCE
) -> Iterator[LocalMesh]:
    local = LocalMesh(data_dir=tmp_path, worker_ports=(0,) * workers, worker_threads=1, env=env)
    local.start()
    try:
        register(local.registry_address, smollm2)
        yield local
    finally:
        local.stop()


@pytest.fixture
def mesh2(tmp_path: Path, smollm2: model_pb2.Model) -> Iterator[LocalMesh]:
    """Registry, two workers and a router whose breaker opens at the first failure."""
    yield from _mesh(tmp_path, smollm2, workers=2)


@pytest.fixture
def mesh1(tmp_path: Path, smollm2: model_pb2.Model) -> Iterator[LocalMesh]:
    """The same with one worker: every request goes to it. Its silence bound is long: a
    worker just resumed from SIGSTOP on a loaded 2-core machine has taken over the default
    2 s to answer, and the test is about the deadline (tests/robustness/test_frozen_worker.py
    is about silence)."""
    env = {
        **BREAK_AT_ONCE,
        "MODELYARD_ROUTER_SILENCE_TIMEOUT_S": "15",
        "MODELYARD_ROUTER_STREAM_SILENCE_TIMEOUT_S": "20",
    }
    yield from _mesh(tmp_path, smollm2, workers=1, env=env)


def _stub(mesh: LocalMesh) -> Iterator[router_pb2_grpc.RouterServiceStub]:
    with grpc.insecure_channel(mesh.router_address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


@pytest.fixture
def stub(mesh2: LocalMesh) -> Iterator[router_pb2_grpc.RouterServiceStub]:
    yield from _stub(mesh2)


@pytest.fixture
def stub1(mesh1: LocalMesh) -> Iterator[router_pb2_grpc.RouterServiceStub]:
    yield from _stub(mesh1)


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


def complete(
    stub: router_pb2_grpc.RouterServiceStub, request: router_pb2.GenerateRequest, timeout: float
) -> router_pb2.CompleteResponse:
    reply: router_pb2.CompleteResponse = stub.Complete(
        router_pb2.CompleteRequest.FromString(request.SerializeToString()), timeout=timeout
    )
    return reply


def wait_for_models(stub: router_pb2_grpc.RouterServiceStub, names: set[str]) -> None:
    def listed() -> bool:
        reply = stub.ListModels(router_pb2.RouterServiceListModelsRequest(), timeout=5)
        return names <= {m.model.name for m in reply.models}

    until(listed, f"router lists {names}")


def register_priced(
    mesh: LocalMesh, stub: router_pb2_grpc.RouterServiceStub, smollm2: model_pb2.Model
) -> None:
    register(mesh.registry_address, priced(smollm2, "smol-dear", 0.002))
    register(mesh.registry_address, priced(smollm2, "smol-cheap", 0.0005))
    wait_for_models(stub, {"smol-dear", "smol-cheap"})  # arrives through Watch


def test_cost_picks_the_cheaper_model_whenever_it_meets_the_ceiling(
    mesh2: LocalMesh, stub: router_pb2_grpc.RouterServiceStub, smollm2: model_pb2.Model
) -> None:
    register_priced(mesh2, stub, smollm2)
    hints = {"objective": common_pb2.OBJECTIVE_COST, "required_tags": ["cost-test"]}
    for ceiling in (None, 0.01, 0.0005):
        extra = {} if ceiling is None else {"max_cost_per_1k_tokens": ceiling}
        reply = complete(stub, ask("auto", **hints, **extra), timeout=60)
        assert reply.started.model == "smol-cheap"
        assert reply.finished.cost.total_usd > 0
    with pytest.raises(grpc.RpcError) as too_low:
        complete(stub, ask("auto", **hints, max_cost_per_1k_tokens=0.0001), timeout=30)
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
        reply = complete(stub, ask(smollm2.name), timeout=60)
        assert reply.started.worker_id != victim
    workers = stub.ListWorkers(router_pb2.ListWorkersRequest(), timeout=5).workers
    dead = [w for w in workers if w.worker_id == victim]
    assert dead and dead[0].breaker == router_pb2.BREAKER_STATE_OPEN


def test_a_hung_worker_honours_the_deadline(
    mesh1: LocalMesh, stub1: router_pb2_grpc.RouterServiceStub, smollm2: model_pb2.Model
) -> None:
    complete(stub1, ask(smollm2.name), timeout=120)  # the model is warm: only the hang counts
    # Freeze the only worker (SIGSTOP): it accepts nothing and answers nothing.
    worker = mesh1.service("worker-0")
    os.kill(worker.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(grpc.RpcError) as hung:
            complete(stub1, ask(smollm2.name), timeout=2.0)
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)
    # The caller's deadline, not an outage: DEADLINE_EXCEEDED, and the caller's deadline
    # is no fault of the worker's, so once it answers again the router uses it at once.
    assert hung.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    reply = complete(stub1, ask(smollm2.name), timeout=120)
    assert reply.started.worker_id == "worker-0"
    assert reply.finished.usage.output_tokens > 0


def _mentions(log: Path, words: str) -> bool:
    return words in log.read_text()


def test_routing_continues_while_the_registry_is_down(
    mesh2: LocalMesh, stub: router_pb2_grpc.RouterServiceStub, smollm2: model_pb2.Model
) -> None:
    register_priced(mesh2, stub, smollm2)
    # Workers start beside the registry, so their first Watch may still be in backoff
    # (seen once: the registry stopped before either had connected, and neither knew the
    # models). Their cache is this test's premise: wait until both follow the registry.
    for i in range(2):
        worker_log = mesh2.data_dir / "logs" / f"worker-{i}.log"
        until(functools.partial(_mentions, worker_log, "watching registry"), f"worker-{i} watches")
    assert mesh2.service("registry").stop() == 0  # the process is gone, its port closed
    log = mesh2.data_dir / "logs" / "router.log"
    until(lambda: "lost registry watch" in log.read_text(), "the router saw the registry go")
    for model in (smollm2.name, "smol-cheap", "auto"):
        reply = complete(stub, ask(model), timeout=60)
        assert reply.finished.usage.output_tokens > 0
    stats = stub.GetRoutingStats(router_pb2.GetRoutingStatsRequest(), timeout=5)
    assert sum(m.traffic.requests for m in stats.models) == 3
    assert sum(m.traffic.errors for m in stats.models) == 0
