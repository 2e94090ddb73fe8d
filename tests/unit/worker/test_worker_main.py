"""The worker process entry: serve() until a signal, with health and /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from modelyard.local_mesh import free_port
from modelyard.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.fixtures.catalogue import write_catalog
from tests.fixtures.tiny_gguf import gguf_model
from tests.worker_events import next_content
from worker.config import WorkerSettings
from worker.main import NOT_SERVING, PRELOADED, SERVICE_NAME, SERVING, serve, start_worker
from worker.residency import ModelManager, ResidencyState


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read()).decode()


async def test_serve_answers_until_sigterm_and_exposes_metrics(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    metrics_port = free_port()
    settings = WorkerSettings(
        address="127.0.0.1:0",
        threads=1,
        metrics_port=metrics_port,
        catalog_file=write_catalog(tmp_path, gguf_model(tiny_gguf)),
    )
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve(settings, on_ready=ready.set_result))
    port = await asyncio.wait_for(ready, 10)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        await stub.LoadModel(worker_pb2.LoadModelRequest(model=gguf_model(tiny_gguf)))

    metrics = await asyncio.to_thread(fetch, f"http://127.0.0.1:{metrics_port}/metrics")
    assert 'modelyard_worker_running_sequences{model="tiny@1"} 0.0' in metrics
    assert 'modelyard_worker_generated_tokens_total{model="tiny@1"}' in metrics

    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, 10)


async def test_a_graceful_stop_says_not_serving_then_drains_then_unloads(
    smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Server-side order of the stop, with the requests in flight at each step.
    steps: list[tuple[str, int]] = []
    managers: list[ModelManager] = []
    not_serving = health.aio.HealthServicer.enter_graceful_shutdown
    close = ModelManager.close

    async def recording_not_serving(self: health.aio.HealthServicer) -> None:
        steps.append(("not_serving", in_flight(managers[0])))
        await not_serving(self)

    async def recording_close(self: ModelManager) -> None:
        managers.append(self)
        steps.append(("unload", in_flight(self)))
        await close(self)

    def in_flight(manager: ModelManager) -> int:
        return sum(r.refcount for r in manager.residents())

    monkeypatch.setattr(health.aio.HealthServicer, "enter_graceful_shutdown", recording_not_serving)
    monkeypatch.setattr(ModelManager, "close", recording_close)
    real_load = ModelManager.load

    async def remembering_load(self: ModelManager, *args: Any, **kwargs: Any) -> Any:
        managers[:] = [self]
        return await real_load(self, *args, **kwargs)

    monkeypatch.setattr(ModelManager, "load", remembering_load)

    # 100 ms a step, 8 steps: still decoding when the signal comes, done well within the
    # stop's 5 s grace even on a loaded machine.
    model = gguf_model(smollm2_gguf, name="smollm2")
    settings = WorkerSettings(
        address="127.0.0.1:0",
        threads=1,
        token_delay_ms=100,
        catalog_file=write_catalog(tmp_path, model),
    )
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve(settings, on_ready=ready.set_result))
    port = await asyncio.wait_for(ready, 10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        await stub.LoadModel(worker_pb2.LoadModelRequest(model=model), timeout=30)
        request = worker_pb2.WorkerServiceGenerateRequest(
            model=model, prompt="Count from 1 to 100: 1, 2, 3,"
        )
        request.sampling.temperature, request.sampling.max_tokens = 0.0, 8
        call = stub.Generate(request, timeout=60)
        assert (await next_content(call)).WhichOneof("event") == "started"
        assert (await next_content(call)).WhichOneof("event") == "delta"  # decoding now
        os.kill(os.getpid(), signal.SIGTERM)
        rest = []
        while (event := await call.read()) is not grpc.aio.EOF:
            rest.append(event)
    await asyncio.wait_for(task, 30)

    # NOT_SERVING while the request ran; models unloaded once it had drained, not before.
    assert steps == [("not_serving", 1), ("unload", 0)]
    finished = rest[-1].finished
    assert finished.finish_reason == common_pb2.FINISH_REASON_LENGTH  # ran to its end
    assert [r.state for r in managers[0].residents()] == [ResidencyState.COLD]


async def test_stopping_ends_status_watches_without_waiting_for_the_grace() -> None:
    worker = await start_worker(WorkerSettings(address="127.0.0.1:0", threads=1))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        watch = worker_pb2_grpc.WorkerServiceStub(channel).WatchStatus(
            worker_pb2.WatchStatusRequest()
        )
        await watch.read()
        started = time.monotonic()
        await worker.stop(grace_s=10)
        assert time.monotonic() - started < 5
        while await asyncio.wait_for(watch.read(), 5) is not grpc.aio.EOF:
            pass  # the last status, sent as the watch ends
        assert await watch.code() == grpc.StatusCode.OK


async def _preloaded_status(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=PRELOADED), timeout=5)
        whole = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert whole.status == health_pb2.HealthCheckResponse.SERVING  # liveness: always
        return int(reply.status)


@pytest.mark.parametrize(
    ("preload", "ready"),
    [([], True), (["tiny@1"], True), (["tiny@1", "ghost@1"], False)],
    ids=["nothing-to-preload", "preloaded", "a-preload-failed"],
)
async def test_ready_once_every_preloaded_model_is_warm(
    tiny_gguf: Path, tmp_path: Path, preload: list[str], ready: bool
) -> None:
    settings = WorkerSettings(
        address="127.0.0.1:0",
        threads=1,
        catalog_file=write_catalog(tmp_path, gguf_model(tiny_gguf)),
        preload=str(tmp_path / "preload.yaml") if preload else "",
    )
    (tmp_path / "preload.yaml").write_text("\n".join(f"- {p}" for p in preload))
    worker = await start_worker(settings)
    try:
        if worker.preloading is not None:
            # Before the pass ends the worker is alive but not ready.
            if not worker.preloading.done():
                assert await _preloaded_status(worker.port) == NOT_SERVING
            await asyncio.wait_for(worker.preloading, 120)
        expected = SERVING if ready else NOT_SERVING
        assert await _preloaded_status(worker.port) == expected
        if preload:
            warm = [r.key for r in worker.manager.residents() if r.state is ResidencyState.WARM]
            assert warm == ["tiny@1"]
    finally:
        await worker.stop(0)
