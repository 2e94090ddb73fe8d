"""Two router processes over one registry (issue 14): outcomes, stats and feedback span
the replicas, and a registry outage loses no request and no outcome.

The routers share the session mesh's worker (real SmolLM2 on llama.cpp); the registry is
this test's own process (it is stopped and started again), holding the same model record
the worker resolves through its registry. Each role has its own token, so the routers
write outcomes with the outcome-writer token and never hold the admin's.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from modelyard.bearer import bearer_metadata
from modelyard.local_mesh import LocalMesh, ServiceProcess, free_port, spawn_service
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    outcomes_pb2,
    outcomes_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from tests.integration.conftest import until

pytestmark = pytest.mark.integration

ADMIN = "outcomes-admin"
READER = "outcomes-reader"
WRITER = "outcomes-writer"
OUTAGE_S = 10.0


class Registry:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.db = data_dir / "registry.db"
        self.log = data_dir / "registry.log"
        self.process: ServiceProcess | None = None

    def start(self) -> None:
        args = ["registry", "serve", "--address", self.address]
        args += ["--database-url", f"sqlite+aiosqlite:///{self.db}"]
        env = {
            "MODELYARD_REGISTRY_ADMIN_TOKEN": ADMIN,
            "MODELYARD_REGISTRY_READER_TOKENS": f"routers:{READER}",
            "MODELYARD_REGISTRY_OUTCOME_WRITER_TOKENS": f"routers:{WRITER}",
        }
        self.process = spawn_service("registry", args, self.address, self.log, env)
        self.process.wait_healthy(60)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@pytest.fixture
def registry(tmp_path: Path, smollm2: model_pb2.Model) -> Iterator[Registry]:
    reg = Registry(tmp_path)
    reg.start()
    try:
        with grpc.insecure_channel(reg.address) as channel:
            registry_pb2_grpc.RegistryServiceStub(channel).RegisterModel(
                registry_pb2.RegisterModelRequest(model=smollm2),
                timeout=30,
                metadata=bearer_metadata(ADMIN),
            )
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def routers(tmp_path: Path, registry: Registry, mesh: LocalMesh) -> Iterator[list[str]]:
    env = {
        "MODELYARD_ROUTER_REGISTRY_TOKEN": READER,
        "MODELYARD_ROUTER_OUTCOME_TOKEN": WRITER,
        "MODELYARD_ROUTER_OUTCOME_FLUSH_INTERVAL_S": "0.5",
    }
    started: list[ServiceProcess] = []
    try:
        for name in ("router-a", "router-b"):
            address = f"127.0.0.1:{free_port()}"
            args = ["router", "serve", "--address", address]
            args += ["--registry-address", registry.address, "--worker", mesh.worker_addresses[0]]
            started.append(
                spawn_service(
                    name,
                    args,
                    address,
                    tmp_path / f"{name}.log",
                    {**env, "MODELYARD_ROUTER_ROUTER_ID": name},
                )
            )
        for process in started:
            process.wait_healthy(60)
        yield [p.address for p in started]
    finally:
        for process in started:
            process.stop()


def complete(address: str, model: model_pb2.Model) -> str:
    """One short generation through the router at `address`; returns its request id."""
    request_id = f"req-{uuid.uuid4().hex}"
    with grpc.insecure_channel(address) as channel:
        router_pb2_grpc.RouterServiceStub(channel).Complete(
            router_pb2.CompleteRequest(
                model=model.name,
                prompt="Say hi.",
                request_id=request_id,
                sampling=common_pb2.SamplingParams(max_tokens=2, temperature=0),
            ),
            timeout=60,
        )
    return request_id


def served(address: str, model: model_pb2.Model) -> bool:
    try:
        complete(address, model)
    except grpc.RpcError:
        return False
    return True


def stats(address: str, model: model_pb2.Model) -> tuple[router_pb2.GetRoutingStatsResponse, int]:
    """The routing stats, and the model version's successful requests in them."""
    with grpc.insecure_channel(address) as channel:
        reply = router_pb2_grpc.RouterServiceStub(channel).GetRoutingStats(
            router_pb2.GetRoutingStatsRequest(model=model.name), timeout=10
        )
    ok = sum(
        m.traffic.requests - m.traffic.errors for m in reply.models if m.version == model.version
    )
    return reply, ok


def feedback(address: str, request_id: str, score: float, comment: str) -> None:
    with grpc.insecure_channel(address) as channel:
        router_pb2_grpc.RouterServiceStub(channel).RecordFeedback(
            router_pb2.RecordFeedbackRequest(request_id=request_id, score=score, comment=comment),
            timeout=30,
        )


def test_stats_and_feedback_span_router_replicas_and_survive_a_registry_outage(
    registry: Registry, routers: list[str], smollm2: model_pb2.Model
) -> None:
    a, b = routers
    warmups = 0
    for address in routers:
        # Each router learns the catalogue and the worker's state asynchronously.
        until(lambda address=address: served(address, smollm2), f"{address} serves", 60)  # type: ignore[misc]
        warmups += 1
    served_by_a = [complete(a, smollm2) for _ in range(3)]
    served_by_b = [complete(b, smollm2) for _ in range(2)]
    expected = warmups + len(served_by_a) + len(served_by_b)

    # Feedback on the replica that did not serve it, at once: A may still buffer it.
    feedback(b, served_by_a[0], 0.75, "clear and short")
    feedback(a, served_by_b[0], 0.25, "")
    with pytest.raises(grpc.RpcError) as twice:
        feedback(a, served_by_a[0], 1.0, "")
    assert twice.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as unknown:
        feedback(a, "req-never-served", 1.0, "")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    for address in routers:
        until(lambda address=address: stats(address, smollm2)[1] == expected, "mesh-wide sum", 30)  # type: ignore[misc]
        reply, _ = stats(address, smollm2)
        assert reply.mesh_wide and reply.outcomes_dropped == 0
        version = next(m.traffic for m in reply.models if m.version == smollm2.version)
        assert version.feedback_count == 2
        assert version.mean_feedback_score == pytest.approx(0.5)

    # The registry goes away for a while under light traffic: no request fails.
    registry.stop()
    during: list[str] = []
    outage_ends = time.monotonic() + OUTAGE_S
    while time.monotonic() < outage_ends:
        during.append(complete(a if len(during) % 2 else b, smollm2))
    local, _ = stats(a, smollm2)
    assert not local.mesh_wide  # this replica's own figures, said so
    registry.start()
    expected += len(during)

    def caught_up() -> bool:
        reply, ok = stats(b, smollm2)
        return reply.mesh_wide and ok + reply.outcomes_dropped == expected

    until(caught_up, "the buffered outcomes reach the registry", 30)
    for address in routers:
        reply, ok = stats(address, smollm2)
        assert reply.outcomes_dropped == 0 and ok == expected

    with sqlite3.connect(registry.db) as db:  # the comment is kept, with the score
        row = db.execute(
            "SELECT feedback_score, feedback_comment, router_id FROM outcomes WHERE request_id = ?",
            (served_by_a[0],),
        ).fetchone()
    assert row == (0.75, "clear and short", "router-a")
    with grpc.insecure_channel(registry.address) as channel:
        writes = outcomes_pb2_grpc.OutcomeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as reader_writes:
            writes.RecordOutcomes(
                outcomes_pb2.RecordOutcomesRequest(
                    outcomes=[outcomes_pb2.Outcome(request_id="forged", model="x")]
                ),
                timeout=10,
                metadata=bearer_metadata(READER),
            )
    assert reader_writes.value.code() == grpc.StatusCode.PERMISSION_DENIED
