"""A worker in the test's process and a stub on it: the fixture body of the worker suites
that drive a real worker over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import grpc

from modelyard.v1 import model_pb2, worker_pb2, worker_pb2_grpc
from worker.catalogue import Catalogue
from worker.config import WorkerSettings
from worker.main import start_worker


@asynccontextmanager
async def serving(
    settings: WorkerSettings, catalogue: Catalogue, loaded: Sequence[model_pb2.Model] = ()
) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    """A stub on a worker serving `catalogue`, with `loaded` warm; stopped on exit."""
    running = await start_worker(settings, catalogue=catalogue)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = worker_pb2_grpc.WorkerServiceStub(channel)
            for model in loaded:
                await stub.LoadModel(worker_pb2.LoadModelRequest(model=model), timeout=60)
            yield stub
    finally:
        await running.stop(grace_s=1)
