"""Sim-engine workers (in this process or as their own processes) and a router in this
process, on loopback: what the liveness and slow-reader tests run against."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from modelyard.local_mesh import ServiceProcess, free_port, spawn_service
from modelyard.server import start_server
from modelyard.v1 import common_pb2, model_pb2, registry_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.sim_models import sim_model as shared_sim_model
from tests.unit.router.doubles import REGISTRY_SERVICE, FakeRegistry, RouterUnderTest
from tests.unit.router.doubles import running_router as _running_router
from worker.artifacts.settings import ArtifactSettings
from worker.catalogue.file import FileCatalogue
from worker.config import WorkerSettings
from worker.main import RunningWorker, start_worker

GiB = 1 << 30
PROMPT = "Tell me about the mesh"


def sim_model(artifact: Path, name: str = "sim", **extra: str) -> model_pb2.Model:
    options = {"sim_decode_ms_per_token": "1", "sim_eos_probability": "0"}
    options["sim_memory_bytes"] = str(GiB)
    return shared_sim_model(artifact, name, extra={**options, **extra}, context_length=4096)


def artifact_in(directory: Path) -> Path:
    path = directory / "sim.bin"
    path.write_bytes(b"a simulated model: any small file will do\n")
    return path


def ask(model: str = "sim", max_tokens: int = 8) -> Any:
    from modelyard.v1 import router_pb2

    return router_pb2.GenerateRequest(
        model=model,
        prompt=PROMPT,
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


@asynccontextmanager
async def sim_worker(
    tmp: Path, models: Sequence[model_pb2.Model], **settings: Any
) -> AsyncIterator[RunningWorker]:
    """A worker in this process offering the sim engine and serving `models`."""
    config = WorkerSettings(
        address="127.0.0.1:0",
        threads=1,
        sim_engine=True,
        memory_budget_bytes=8 * GiB,
        artifacts=ArtifactSettings(cache_dir=tmp / "cache"),
        **settings,
    )
    worker = await start_worker(config, catalogue=FileCatalogue(list(models)))
    try:
        yield worker
    finally:
        await worker.stop(grace_s=0)


def free_address() -> str:
    return f"127.0.0.1:{free_port()}"


def spawn_sim_worker(
    tmp: Path, name: str, models: Sequence[model_pb2.Model], **env: str
) -> ServiceProcess:
    """A worker as its own process (so a test can SIGSTOP it), healthy on return."""
    catalogue = tmp / f"{name}-catalogue.json"
    catalogue.write_text(json.dumps([json_format.MessageToDict(m) for m in models]))
    address = free_address()
    child_env = {
        "MODELYARD_WORKER_SIM_ENGINE": "true",
        "MODELYARD_WORKER_CATALOG_FILE": str(catalogue),
        "MODELYARD_WORKER_MEMORY_BUDGET_BYTES": str(8 * GiB),
        "MODELYARD_WORKER_ARTIFACTS_CACHE_DIR": str(tmp / f"{name}-cache"),
        "MODELYARD_CONSUL_ADDRESS": "",
        **env,
    }
    args = ["worker", "serve", "--address", address, "--worker-id", name, "--threads", "1"]
    process = spawn_service(name, args, address, tmp / f"{name}.log", child_env)
    try:
        process.wait_healthy(60)
    except BaseException:
        process.stop()
        raise
    return process


@asynccontextmanager
async def sim_router(
    models: Sequence[model_pb2.Model], workers: Sequence[str], **settings: Any
) -> AsyncIterator[RouterUnderTest]:
    """A registry double holding `models` and a router in this process over `workers`."""
    registry = FakeRegistry(models)
    server = await start_server(
        "127.0.0.1:0",
        lambda s: registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry, s),
        [REGISTRY_SERVICE],
    )
    try:
        async with _running_router(f"127.0.0.1:{server.port}", workers, **settings) as router:
            yield router
    finally:
        await server.stop(0)


async def until_watching(router: RouterUnderTest, count: int) -> None:
    """Wait until the router follows `count` workers' status streams."""
    async with asyncio.timeout(30):
        while True:
            if sum(h.watching for h in router.pool.workers) == count:
                return
            await asyncio.sleep(0.05)


async def running_sequences(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        reply = await stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=5)
        return int(reply.status.running_sequences)


async def until_running(address: str, running: bool, timeout_s: float = 30.0) -> None:
    """Poll the worker until a sequence runs (or, `running` False, none: the slot is free)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if bool(await running_sequences(address)) == running:
                return
            await asyncio.sleep(0.02)


async def load(address: str, model: model_pb2.Model) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        await stub.LoadModel(worker_pb2.LoadModelRequest(model=model), timeout=60)
