"""The worker's admin token and API key, the router's API keys, Consul checks over TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelyard.auth import bearer_interceptors, bearer_metadata
from modelyard.discovery.consul import ServiceSpec
from modelyard.discovery.settings import DiscoverySettings
from modelyard.errors import from_rpc_error
from modelyard.security import WorkerAuthSettings, worker_gate
from modelyard.server import RunningServer, start_server
from modelyard.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from router.auth import router_gate
from router.config import RouterSettings

HEALTH = health_pb2.HealthCheckRequest()


async def health_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(HEALTH, timeout=3)
    except grpc.aio.AioRpcError as err:
        return cast(grpc.StatusCode, err.code())
    return grpc.StatusCode.OK


def test_consul_check_uses_tls_when_the_service_does() -> None:
    spec = ServiceSpec("modelyard-worker", "w", "10.0.0.1", 50052, "svc", grpc_use_tls=True)
    assert spec.check(DiscoverySettings())["GRPCUseTLS"] is True
    assert ServiceSpec("r", "r", "h", 1, "svc").check(DiscoverySettings())["GRPCUseTLS"] is False


# -- bearer secrets -----------------------------------------------------------------------


class Worker(worker_pb2_grpc.WorkerServiceServicer):
    async def LoadModel(self, request: Any, context: Any) -> worker_pb2.LoadModelResponse:
        return worker_pb2.LoadModelResponse()

    async def GetStatus(self, request: Any, context: Any) -> worker_pb2.GetStatusResponse:
        return worker_pb2.GetStatusResponse()

    async def WatchStatus(
        self, request: Any, context: Any
    ) -> AsyncIterator[worker_pb2.WatchStatusResponse]:
        yield worker_pb2.WatchStatusResponse()


class Router(router_pb2_grpc.RouterServiceServicer):
    async def ListModels(
        self, request: Any, context: Any
    ) -> router_pb2.RouterServiceListModelsResponse:
        return router_pb2.RouterServiceListModelsResponse()


async def serve_with(
    add: Callable[[grpc.aio.Server], None], interceptor: Any, service: str
) -> tuple[RunningServer, str]:
    running = await start_server("127.0.0.1:0", add, [service], interceptors=[interceptor])
    return running, f"127.0.0.1:{running.port}"


def reason(err: grpc.aio.AioRpcError) -> str:
    return from_rpc_error(err).reason


async def test_worker_admin_token_guards_load_and_unload_only() -> None:
    gate = worker_gate(WorkerAuthSettings(admin_token="s3cret"))
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
    gate = worker_gate(WorkerAuthSettings(api_key="k"))
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


async def test_router_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_ROUTER_API_KEYS", "alpha, beta")
    gate = router_gate(RouterSettings().api_keys)
    running, address = await serve_with(
        lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(Router(), s),  # type: ignore[abstract]
        gate,
        "modelyard.v1.RouterService",
    )
    request = router_pb2.RouterServiceListModelsRequest()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub: Any = router_pb2_grpc.RouterServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.ListModels(request, timeout=5)
            assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await stub.ListModels(request, timeout=5, metadata=bearer_metadata("gamma"))
            assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED
            for key in ("alpha", "beta"):
                await stub.ListModels(request, timeout=5, metadata=bearer_metadata(key))
            await stub.ListModels(request, timeout=5, metadata=(("authorization", "bearer beta"),))
            assert await health_code(channel) == grpc.StatusCode.OK  # health stays open
    finally:
        await running.stop(0)


def test_router_without_keys_lets_everything_through(tmp_path: Path) -> None:
    assert not router_gate(RouterSettings().api_keys).enabled
    assert not worker_gate(WorkerAuthSettings()).enabled
