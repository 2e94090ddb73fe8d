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


class StatsRouter(Router):
    async def GetRoutingStats(self, request: Any, context: Any) -> Any:
        return router_pb2.GetRoutingStatsResponse()

    async def ListWorkers(self, request: Any, context: Any) -> Any:
        return router_pb2.ListWorkersResponse()


async def _codes(gate: Any, key: str) -> dict[str, grpc.StatusCode]:
    """The status each of ListModels, GetRoutingStats and ListWorkers answers `key` with."""
    running, address = await serve_with(
        lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(StatsRouter(), s),  # type: ignore[abstract]
        gate,
        "modelyard.v1.RouterService",
    )
    calls = {
        "ListModels": router_pb2.RouterServiceListModelsRequest(),
        "GetRoutingStats": router_pb2.GetRoutingStatsRequest(),
        "ListWorkers": router_pb2.ListWorkersRequest(),
    }
    codes: dict[str, grpc.StatusCode] = {}
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub: Any = router_pb2_grpc.RouterServiceStub(channel)
            for name, request in calls.items():
                try:
                    await getattr(stub, name)(request, timeout=5, metadata=bearer_metadata(key))
                    codes[name] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    codes[name] = err.code()
                    assert err.code() != grpc.StatusCode.PERMISSION_DENIED or (
                        "MODELYARD_ROUTER_OPERATOR_KEYS" in (err.details() or "")
                    )
    finally:
        await running.stop(0)
    return codes


async def test_stats_and_workers_are_for_operators() -> None:
    ok, denied = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED
    gate = router_gate(["app:client-key"], (), ["ops:operator-key"])
    assert await _codes(gate, "client-key") == {
        "ListModels": ok,
        "GetRoutingStats": denied,
        "ListWorkers": denied,
    }
    assert set((await _codes(gate, "operator-key")).values()) == {ok}
    # Client keys but no operator key configured: nobody reads the mesh's traffic (closed,
    # not open), and the refusal says which setting opens it.
    sealed = router_gate(["app:client-key"])
    assert await _codes(sealed, "client-key") == {
        "ListModels": ok,
        "GetRoutingStats": denied,
        "ListWorkers": denied,
    }
