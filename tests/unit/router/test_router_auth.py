"""The router's gate on a stub servicer: client API keys on every RouterService call."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from modelyard.bearer import bearer_metadata
from modelyard.v1 import router_pb2, router_pb2_grpc
from router.auth import router_gate
from router.config import RouterSettings
from tests.grpc_kit import health_code, serve_with


class Router(router_pb2_grpc.RouterServiceServicer):
    async def ListModels(
        self, request: Any, context: Any
    ) -> router_pb2.RouterServiceListModelsResponse:
        return router_pb2.RouterServiceListModelsResponse()


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


def test_router_without_keys_lets_everything_through() -> None:
    assert not router_gate(RouterSettings().api_keys).enabled
