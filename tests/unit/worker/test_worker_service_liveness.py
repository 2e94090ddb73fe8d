"""The worker tells the router it is alive (issue #11): GenerationAccepted first, then a
keepalive with the request's phase whenever nothing else went out for an interval."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from modelyard.v1 import model_pb2, worker_pb2, worker_pb2_grpc
from tests.robustness.sim_workers import artifact_in, sim_model, sim_worker, until_running

pytestmark = pytest.mark.asyncio(loop_scope="session")

Event = worker_pb2.WorkerServiceGenerateResponse
LOADING = worker_pb2.GENERATION_PHASE_LOADING
QUEUED = worker_pb2.GENERATION_PHASE_QUEUED
DECODING = worker_pb2.GENERATION_PHASE_DECODING


def request(model: model_pb2.Model, max_tokens: int) -> worker_pb2.WorkerServiceGenerateRequest:
    req = worker_pb2.WorkerServiceGenerateRequest(model=model, prompt="Hi", load_if_cold=True)
    req.sampling.max_tokens = max_tokens
    return req


def summary(events: list[Event]) -> list[str]:
    """Kinds in order, a keepalive as its phase, repeats folded."""
    out: list[str] = []
    for e in events:
        kind: str = e.WhichOneof("event") or "?"
        if kind == "keepalive":
            kind = worker_pb2.GenerationPhase.Name(e.keepalive.phase).removeprefix(
                "GENERATION_PHASE_"
            )
        if not out or out[-1] != kind:
            out.append(kind)
    return out


async def test_a_cold_load_is_acknowledged_and_kept_alive(tmp_path: Path) -> None:
    model = sim_model(artifact_in(tmp_path), sim_load_ms="800")
    async with (
        sim_worker(tmp_path, [model], generate_keepalive_s=0.1) as worker,
        grpc.aio.insecure_channel(f"127.0.0.1:{worker.server.port}") as channel,
    ):
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        status = (await stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=10)).status
        events = [e async for e in stub.Generate(request(model, 2), timeout=30)]
    assert status.generate_keepalive_interval.ToMilliseconds() == 100  # advertised
    assert events[0].accepted.keepalive_interval.ToMilliseconds() == 100
    assert summary(events)[:3] == ["accepted", "LOADING", "started"]
    assert summary(events)[-1] == "finished"


async def test_queue_waits_and_slow_tokens_are_kept_alive(tmp_path: Path) -> None:
    model = sim_model(artifact_in(tmp_path), sim_decode_ms_per_token="300")
    async with sim_worker(
        tmp_path, [model], generate_keepalive_s=0.1, max_parallel_sequences=1
    ) as worker:
        address = f"127.0.0.1:{worker.server.port}"
        async with grpc.aio.insecure_channel(address) as channel:
            stub = worker_pb2_grpc.WorkerServiceStub(channel)
            await stub.LoadModel(worker_pb2.LoadModelRequest(model=model), timeout=30)
            first = asyncio.ensure_future(collect(stub, request(model, 3)))
            await until_running(address, True)  # the one slot is taken
            second = await collect(stub, request(model, 1))
            holder = await first
    # The holder decodes 3 tokens 300 ms apart: keepalives between them say DECODING.
    assert "DECODING" in summary(holder)
    # The second waited for the slot: QUEUED keepalives before it started.
    assert summary(second)[:3] == ["accepted", "QUEUED", "started"]


async def collect(
    stub: worker_pb2_grpc.WorkerServiceStub, req: worker_pb2.WorkerServiceGenerateRequest
) -> list[Event]:
    return [e async for e in stub.Generate(req, timeout=30)]
