"""A real mesh (registry, worker, router as processes) discovering itself through the
Consul stand-in: every service registers with a gRPC check, the router's workers come
from Consul's healthy set only (it is given no static worker), and the router keeps
that set while Consul is down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from modelyard.local_mesh import LocalMesh
from modelyard.v1 import router_pb2, router_pb2_grpc
from tests.consul_agent import ConsulAgentStandIn
from tests.integration.conftest import until

pytestmark = pytest.mark.integration


@pytest.fixture
def consul_mesh(tmp_path: Path) -> Iterator[tuple[ConsulAgentStandIn, LocalMesh]]:
    with ConsulAgentStandIn(acl_tokens={"mesh-token"}) as agent:
        mesh = LocalMesh(
            data_dir=tmp_path,
            worker_ports=(0, 0),
            worker_threads=1,
            static_workers=False,  # whatever the router knows of workers, Consul told it
            env={
                "MODELYARD_CONSUL_ADDRESS": agent.address,
                "MODELYARD_CONSUL_TOKEN": "mesh-token",
                "MODELYARD_CONSUL_CHECK_INTERVAL_S": "0.2",
                "MODELYARD_CONSUL_WAIT_S": "5",
            },
        )
        mesh.start()
        try:
            yield agent, mesh
        finally:
            mesh.stop()


def _router_workers(mesh: LocalMesh) -> list[tuple[str, bool]]:
    with grpc.insecure_channel(mesh.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        reply = stub.ListWorkers(router_pb2.ListWorkersRequest(), timeout=5)
    return sorted((w.address, w.healthy) for w in reply.workers)


def _router_log(mesh: LocalMesh) -> str:
    return (mesh.data_dir / "logs" / "router.log").read_text(errors="replace")


def test_services_register_and_the_router_follows_consul(
    consul_mesh: tuple[ConsulAgentStandIn, LocalMesh],
) -> None:
    agent, mesh = consul_mesh
    until(lambda: len(agent.service_ids()) == 4, "4 services registered")
    assert agent.service_ids("modelyard-worker") == ["worker-0", "worker-1"]
    assert len(agent.service_ids("modelyard-registry")) == 1
    assert len(agent.service_ids("modelyard-router")) == 1
    worker = agent.state.services["worker-0"]
    assert {"version", "engines", "device"} <= set(worker["Meta"])
    assert all(token == "mesh-token" for _, _, token in agent.requests)
    both = sorted(mesh.worker_addresses)
    until(lambda: [a for a, _ in _router_workers(mesh)] == both, "router has both workers")
    # The router asked Consul for them (blocking reads of the worker service).
    assert agent.reads_of("/v1/health/service/modelyard-worker")

    # A worker that stops deregisters and leaves the router's set.
    assert mesh.service("worker-1").stop() == 0
    assert agent.service_ids("modelyard-worker") == ["worker-0"]
    until(
        lambda: [a for a, _ in _router_workers(mesh)] == [mesh.worker_addresses[0]],
        "worker-1 left the router's set",
    )


def test_router_keeps_the_last_known_set_while_consul_is_down(
    consul_mesh: tuple[ConsulAgentStandIn, LocalMesh],
) -> None:
    agent, mesh = consul_mesh
    both = sorted(mesh.worker_addresses)
    until(lambda: [a for a, _ in _router_workers(mesh)] == both, "router has both workers")
    agent.stop()
    # The router's watch has seen the outage (it logs it once) and keeps what it had.
    until(lambda: "cannot watch modelyard-worker" in _router_log(mesh), "the outage logged")
    assert [a for a, _ in _router_workers(mesh)] == both
    until(lambda: all(healthy for _, healthy in _router_workers(mesh)), "both healthy")
    reads_before = len(agent.reads_of("/v1/health/service/modelyard-worker"))
    agent.start()  # same port, same state (an agent with a data dir): the router carries on
    until(
        lambda: "reachable again: watching modelyard-worker" in _router_log(mesh),
        "the router's watch is back",
    )
    assert len(agent.reads_of("/v1/health/service/modelyard-worker")) > reads_before
    assert [a for a, _ in _router_workers(mesh)] == both
    assert _router_log(mesh).count("cannot watch modelyard-worker") == 1
