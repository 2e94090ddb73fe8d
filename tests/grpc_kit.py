"""Small helpers for tests that serve one gRPC service in process behind an interceptor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelyard.errors import from_rpc_error
from modelyard.server import RunningServer, start_server


async def health_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except grpc.aio.AioRpcError as err:
        return cast(grpc.StatusCode, err.code())
    return grpc.StatusCode.OK


async def serve_with(
    add: Callable[[grpc.aio.Server], None], interceptor: Any, service: str
) -> tuple[RunningServer, str]:
    running = await start_server("127.0.0.1:0", add, [service], interceptors=[interceptor])
    return running, f"127.0.0.1:{running.port}"


def reason(err: grpc.aio.AioRpcError) -> str:
    return from_rpc_error(err).reason
