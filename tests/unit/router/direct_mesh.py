"""A mesh for direct streams, in process on loopback: the fake registry (a sim model), the
real router (`router.main.start_router`, with a ticket key and a reporter token) and real
workers on the sim engine that verify tickets and report outcomes to that router."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelyard.bearer import bearer_metadata
from modelyard.client import AsyncClient
from modelyard.server import start_server
from modelyard.v1 import model_pb2, registry_pb2_grpc, router_pb2, router_pb2_grpc
from router.config import RouterSettings
from router.main import RunningRouter, start_router
from tests.sim_models import sim_model
from tests.unit.router.doubles import REGISTRY_SERVICE, FakeRegistry, free_address
from worker.config import WorkerSettings
from worker.main import RunningWorker, start_worker

CLIENT_KEY, OPERATOR_KEY = "direct-client-key", "direct-operator-key"
REPORTER_TOKEN, ROUTER_TO_WORKER = "direct-reporter-token", "direct-router-to-worker"
ROUTER_ID = "router-under-test"
FAST = {
    "sim_decode_ms_per_token": "1",
    "sim_prefill_ms_per_token": "0.01",
    "sim_eos_probability": "0",
    "sim_memory_bytes": str(1 << 30),
}


def write_keys(directory: Path) -> tuple[str, str]:
    """(router setting, worker setting) of a fresh Ed25519 ticket key."""
    key = Ed25519PrivateKey.generate()
    private, public = directory / "tickets.pem", directory / "tickets.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return f"k1:{private}", f"k1:{public}"


@dataclass
class DirectMesh:
    router: RunningRouter
    workers: list[RunningWorker]
    models: list[model_pb2.Model]
    stack: AsyncExitStack
    extra_addresses: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.router.port}"

    def client(self) -> AsyncClient:
        return AsyncClient(self.address, api_key=CLIENT_KEY, timeout_s=30)

    def router_stub(self) -> Any:
        channel = grpc.aio.insecure_channel(self.address)
        self.stack.push_async_callback(channel.close)
        return router_pb2_grpc.RouterServiceStub(channel)

    @property
    def in_flight(self) -> dict[str, int]:
        return dict(self.router.parts.relay.load.in_flight)

    @property
    def admitted(self) -> int:
        return self.router.parts.relay.admission.in_flight

    async def flush_reports(self) -> None:
        for worker in self.workers:
            assert worker.reports is not None
            await worker.reports.flush()

    async def stats(self, model: str) -> router_pb2.TrafficStats:
        reply = await self.router_stub().GetRoutingStats(
            router_pb2.GetRoutingStatsRequest(model=model),
            timeout=5,
            metadata=bearer_metadata(OPERATOR_KEY),
        )
        found = [m.traffic for m in reply.models if m.model == model]
        return found[0] if found else router_pb2.TrafficStats()

    async def wait_healthy(self, count: int) -> None:
        stub = self.router_stub()
        for _ in range(500):
            reply = await stub.ListWorkers(
                router_pb2.ListWorkersRequest(), timeout=5, metadata=bearer_metadata(OPERATOR_KEY)
            )
            if sum(w.healthy for w in reply.workers) >= count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the router never saw its workers")


@asynccontextmanager
async def direct_mesh(
    tmp_path: Path, *, workers: int = 1, extra_addresses: Sequence[str] = (), **router: Any
) -> AsyncIterator[DirectMesh]:
    """`extra_addresses`: more workers the router schedules (test doubles started by the
    caller); `router`: further RouterSettings fields."""
    artifact = tmp_path / "sim.bin"
    artifact.write_bytes(b"a simulated model\n")
    models = [
        sim_model(artifact, name, extra=FAST, context_length=1024) for name in ("sim-a", "sim-b")
    ]
    router_key, worker_key = write_keys(tmp_path)
    async with AsyncExitStack() as stack:
        fake = FakeRegistry(models)
        registry = await start_server(
            "127.0.0.1:0",
            lambda s: registry_pb2_grpc.add_RegistryServiceServicer_to_server(fake, s),
            [REGISTRY_SERVICE],
        )
        stack.push_async_callback(registry.stop, 0)
        registry_address = f"127.0.0.1:{registry.port}"
        addresses = [free_address() for _ in range(workers)]
        settings = RouterSettings(
            **{
                "address": "127.0.0.1:0",
                "registry_address": registry_address,
                "workers": [*addresses, *extra_addresses],
                "api_keys": [f"app:{CLIENT_KEY}"],
                "operator_keys": [f"ops:{OPERATOR_KEY}"],
                "outcome_reporter_tokens": [f"workers:{REPORTER_TOKEN}"],
                "worker_api_key": ROUTER_TO_WORKER,
                "ticket_key": router_key,
                "router_id": ROUTER_ID,
                "outcome_buffer": 0,
                "connect_timeout_s": 1.0,
                **router,
            }
        )
        running = await start_router(settings)
        stack.push_async_callback(running.stop)
        started: list[RunningWorker] = []
        for address in addresses:
            worker = await start_worker(
                WorkerSettings(
                    address=address,
                    threads=1,
                    sim_engine=True,
                    registry_address=registry_address,
                    api_key=ROUTER_TO_WORKER,
                    ticket_keys=[worker_key],
                    outcome_routers={ROUTER_ID: f"127.0.0.1:{running.port}"},
                    outcome_token=REPORTER_TOKEN,
                )
            )
            stack.push_async_callback(worker.stop, 0)
            started.append(worker)
        mesh = DirectMesh(running, started, models, stack, list(extra_addresses))
        await mesh.wait_healthy(workers + len(extra_addresses))
        yield mesh
