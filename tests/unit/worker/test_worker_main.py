"""The worker process entry: serve() until a signal, with health and /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelyard.v1 import worker_pb2, worker_pb2_grpc
from tests.fixtures.tiny_gguf import gguf_model
from worker.config import WorkerSettings
from worker.main import SERVICE_NAME, serve, start_worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read()).decode()


async def test_serve_answers_until_sigterm_and_exposes_metrics(tiny_gguf: Path) -> None:
    metrics_port = free_port()
    settings = WorkerSettings(address="127.0.0.1:0", threads=1, metrics_port=metrics_port)
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
    await asyncio.wait_for(task, 10)  # graceful stop: server down, models unloaded


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
