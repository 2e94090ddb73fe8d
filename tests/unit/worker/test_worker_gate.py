"""The worker's gate on a stub servicer: the admin token guards LoadModel and UnloadModel,
the API key the router's RPCs; health stays open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from modelyard.bearer import bearer_interceptors, bearer_metadata
from modelyard.v1 import worker_pb2, worker_pb2_grpc
from tests.grpc_kit import health_code, reason, serve_with
from worker.auth import worker_gate


class Worker(worker_pb2_grpc.WorkerServiceServicer):
    async def LoadModel(self, request: Any, context: Any) -> worker_pb2.LoadModelResponse:
        return worker_pb2.LoadModelResponse()

    async def GetStatus(self, request: Any, context: Any) -> worker_pb2.GetStatusResponse:
        return worker_pb2.GetStatusResponse()

    async def WatchStatus(
        self, request: Any, context: Any
    ) -> AsyncIterator[worker_pb2.WatchStatusResponse]:
        yield worker_pb2.WatchStatusResponse()


async def test_worker_admin_token_guards_load_and_unload_only() -> None:
    gate = worker_gate(admin_token="s3cret", api_key="")
    running, address = await serve_with(
        lambda s: worker_pb2_grpc.add_WorkerServiceServicer_to_server(Worker(), s),  # type: ignore[abstract]
        gate,
        "modelyard.v1.WorkerService",
    )
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub: Any = worker_pb2_grpc.WorkerServiceStub(channel)
            request = worker_pb2.LoadModelRequest()
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.LoadModel(request, timeout=5)
            assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason(missing.value) == "CREDENTIALS_MISSING"
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await stub.LoadModel(request, timeout=5, metadata=bearer_metadata("s3cre"))
            assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED
            await stub.LoadModel(request, timeout=5, metadata=bearer_metadata("s3cret"))
            # UnloadModel is guarded too (the servicer here does not implement it).
            with pytest.raises(grpc.aio.AioRpcError) as unload:
                await stub.UnloadModel(worker_pb2.UnloadModelRequest(), timeout=5)
            assert unload.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # The router's RPCs stay open without a worker API key.
            await stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=5)
            assert await health_code(channel) == grpc.StatusCode.OK
    finally:
        await running.stop(0)


async def test_worker_api_key_guards_the_routers_rpcs() -> None:
    gate = worker_gate(admin_token="", api_key="k")
    running, address = await serve_with(
        lambda s: worker_pb2_grpc.add_WorkerServiceServicer_to_server(Worker(), s),  # type: ignore[abstract]
        gate,
        "modelyard.v1.WorkerService",
    )
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub: Any = worker_pb2_grpc.WorkerServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=5)
            assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as stream:
                async for _ in stub.WatchStatus(worker_pb2.WatchStatusRequest(), timeout=5):
                    pass
            assert stream.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await health_code(channel) == grpc.StatusCode.OK
        # What the router does with MODELYARD_ROUTER_WORKER_API_KEY: a channel interceptor.
        async with grpc.aio.insecure_channel(address, interceptors=bearer_interceptors("k")) as ch:
            stub = worker_pb2_grpc.WorkerServiceStub(ch)
            await stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=5)
            replies = [r async for r in stub.WatchStatus(worker_pb2.WatchStatusRequest())]
            assert len(replies) == 1
            # LoadModel without an admin token configured: the API key is not asked there.
            await stub.LoadModel(worker_pb2.LoadModelRequest(), timeout=5)
    finally:
        await running.stop(0)


def test_a_worker_without_secrets_lets_everything_through() -> None:
    assert not worker_gate(admin_token="", api_key="").enabled
