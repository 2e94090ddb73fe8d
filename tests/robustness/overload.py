"""The overload scenario, shared by tests/robustness/test_overload.py and
bench/overload_bench.py: measure what the mesh serves, then offer ten times that.

The load model is the sim engine's, so the capacity is known in advance and measured
anyway: `LOAD_MODEL` decodes `SEQUENCES` sequences together at `DECODE_MS` per token,
and every request asks for `TOKENS` tokens. Clients are closed loops: each sends a
request, waits for its end, and sends the next; a refused client pauses `BACKOFF_S`
(far shorter than the retry hint, to keep the pressure on) and tries again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc

from modelyard.bearer import bearer_metadata
from modelyard.errors import from_rpc_error
from modelyard.v1 import common_pb2, registry_pb2, registry_pb2_grpc, router_pb2, router_pb2_grpc
from tests.robustness.sim_mesh import ADMIN_TOKEN, CLIENT_KEY, GiB, SimMesh, sim_model

LOAD_MODEL = "sim-load"
SEQUENCES = 4
DECODE_MS = 5.0
TOKENS = 16
# Refused clients pause this long: the offered load stays ~10x capacity without the
# client process spending the shared cores on refusals (p99 admitted reached 5 s with
# 50 ms on a loaded 2-core machine).
BACKOFF_S = 0.1
DEADLINE_S = 20.0
# The router admits this many generations: the worker's parallel sequences and a queue
# as deep again, so admitted requests wait at most about one generation.
MAX_IN_FLIGHT = 2 * SEQUENCES
ROUTER_ENV: Mapping[str, str] = {"MODELYARD_ROUTER_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT)}
LOAD_EXTRA: Mapping[str, str] = {
    "sim_decode_ms_per_token": str(DECODE_MS),
    "sim_prefill_ms_per_token": "0.01",
    "sim_batch_slowdown": "0.05",
    "sim_max_sequences": str(SEQUENCES),
    "sim_eos_probability": "0",
    "sim_memory_bytes": str(GiB),
}


def register_load_model(mesh: SimMesh) -> None:
    """Register the overload model (once: a second registration is ALREADY_EXISTS)."""
    artifact = mesh.local.data_dir / "sim.bin"
    model = sim_model(artifact, LOAD_MODEL, LOAD_EXTRA)
    with grpc.insecure_channel(mesh.local.registry_address) as channel:
        try:
            registry_pb2_grpc.RegistryServiceStub(channel).RegisterModel(
                registry_pb2.RegisterModelRequest(model=model),
                timeout=30,
                metadata=bearer_metadata(ADMIN_TOKEN),
            )
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise


@dataclass
class Ended:
    """One request's end: its status, how long it took, and whether a retry hint came."""

    code: grpc.StatusCode
    seconds: float
    retry_hint: bool = False
    details: str = ""


@dataclass
class Run:
    """What one phase of load produced."""

    clients: int
    seconds: float
    ended: list[Ended] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        return Counter(e.code.name for e in self.ended)

    def served(self) -> list[float]:
        return [e.seconds for e in self.ended if e.code == grpc.StatusCode.OK]

    @property
    def throughput(self) -> float:
        """Served requests per second."""
        return len(self.served()) / self.seconds


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]


async def one_request(router: router_pb2_grpc.RouterServiceStub) -> Ended:
    request = router_pb2.GenerateRequest(
        model=LOAD_MODEL,
        prompt="Tell me about overload",
        sampling=common_pb2.SamplingParams(max_tokens=TOKENS, temperature=0.0),
    )
    began = time.monotonic()
    try:
        stream = router.Generate(request, timeout=DEADLINE_S, metadata=bearer_metadata(CLIENT_KEY))
        async for _ in stream:
            pass
    except grpc.aio.AioRpcError as err:
        hint = from_rpc_error(err).retry_after_s is not None
        return Ended(err.code(), time.monotonic() - began, hint, err.details() or "")
    return Ended(grpc.StatusCode.OK, time.monotonic() - began)


async def drive(router_address: str, clients: int, seconds: float) -> Run:
    """`clients` closed loops for `seconds`; every request that started is awaited."""
    run = Run(clients, seconds)
    stop_at = time.monotonic() + seconds

    async def client(router: router_pb2_grpc.RouterServiceStub) -> None:
        while time.monotonic() < stop_at:
            ended = await one_request(router)
            run.ended.append(ended)
            if ended.code != grpc.StatusCode.OK:
                await asyncio.sleep(BACKOFF_S)  # pacing the offered load, not a sync

    async with grpc.aio.insecure_channel(router_address) as channel:
        router = router_pb2_grpc.RouterServiceStub(channel)
        began = time.monotonic()
        await asyncio.gather(*(client(router) for _ in range(clients)))
        run.seconds = time.monotonic() - began
    return run


async def measure_capacity(router_address: str, seconds: float) -> Run:
    """Throughput with as many clients as the worker decodes sequences: the mesh's
    capacity (more clients only queue)."""
    return await drive(router_address, SEQUENCES, seconds)
