"""The worker's gate: admin RPCs need the admin token only, the router's RPCs the API key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from modelyard.bearer import bearer_metadata
from modelyard.v1 import worker_pb2, worker_pb2_grpc
from worker.config import WorkerSettings
from worker.main import RunningWorker, start_worker

ADMIN, KEY = "admin-secret", "router-key"


@pytest.fixture
async def worker(request: pytest.FixtureRequest) -> AsyncIterator[RunningWorker]:
    admin_token, api_key = request.param
    running = await start_worker(
        WorkerSettings(address="127.0.0.1:0", threads=1, admin_token=admin_token, api_key=api_key)
    )
    try:
        yield running
    finally:
        await running.stop(0)


async def call(worker: RunningWorker, method: str, secret: str | None) -> grpc.StatusCode:
    """The status `method` answers with `secret` as the bearer (None: no credentials)."""
    metadata = bearer_metadata(secret) if secret else ()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        stub: Any = worker_pb2_grpc.WorkerServiceStub(channel)
        requests = {
            "LoadModel": worker_pb2.LoadModelRequest(),
            "UnloadModel": worker_pb2.UnloadModelRequest(),
            "GetStatus": worker_pb2.GetStatusRequest(),
        }
        try:
            await getattr(stub, method)(requests[method], timeout=5, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK


# Past the gate, an empty LoadModel/UnloadModel is the servicer's INVALID_ARGUMENT.
PASSED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


@pytest.mark.parametrize("worker", [("", KEY)], indirect=True)
async def test_the_api_key_is_not_asked_on_admin_rpcs(worker: RunningWorker) -> None:
    # docs/operations.md: the API key guards Generate, GetStatus and WatchStatus only.
    assert await call(worker, "LoadModel", None) in PASSED
    assert await call(worker, "UnloadModel", None) in PASSED
    assert await call(worker, "GetStatus", None) == grpc.StatusCode.UNAUTHENTICATED
    assert await call(worker, "GetStatus", KEY) == grpc.StatusCode.OK


@pytest.mark.parametrize("worker", [(ADMIN, KEY)], indirect=True)
async def test_admin_rpcs_need_the_admin_token_and_not_the_key(worker: RunningWorker) -> None:
    assert await call(worker, "LoadModel", None) == grpc.StatusCode.UNAUTHENTICATED
    assert await call(worker, "LoadModel", KEY) == grpc.StatusCode.PERMISSION_DENIED
    assert await call(worker, "UnloadModel", KEY) == grpc.StatusCode.PERMISSION_DENIED
    assert await call(worker, "LoadModel", ADMIN) in PASSED
    assert await call(worker, "UnloadModel", ADMIN) in PASSED
    # ... and the admin token is no API key.
    assert await call(worker, "GetStatus", ADMIN) == grpc.StatusCode.PERMISSION_DENIED
    assert await call(worker, "GetStatus", KEY) == grpc.StatusCode.OK
