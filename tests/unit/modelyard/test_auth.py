"""The bearer gate on a real grpc.aio server: who is refused, how, and before what."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelyard.auth import AccessGate, Role, Rule, method_name, service_prefix
from modelyard.bearer import bearer_interceptors, bearer_metadata, bearer_token
from modelyard.errors import from_rpc_error
from modelyard.server import start_server

SERVICE = "modelyard.test.Echo"
ADMIN = method_name(SERVICE, "Admin")
OPEN_TO_KEYS = service_prefix(SERVICE)


class Recorder:
    """A generic service whose handlers note that they ran and what body they parsed."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(name: str) -> grpc.RpcMethodHandler:
            async def call(request: bytes, context: Any) -> bytes:
                self.ran.append(name)
                return request

            return grpc.unary_unary_rpc_method_handler(call, _strict_parse, lambda b: b)

        def stream(name: str) -> grpc.RpcMethodHandler:
            async def call(request: bytes, context: Any) -> AsyncIterator[bytes]:
                self.ran.append(name)
                yield request

            return grpc.unary_stream_rpc_method_handler(call, _strict_parse, lambda b: b)

        return grpc.method_handlers_generic_handler(
            SERVICE, {"Admin": unary("Admin"), "Echo": unary("Echo"), "Watch": stream("Watch")}
        )


def _strict_parse(data: bytes) -> bytes:
    if data.startswith(b"poison"):
        raise ValueError("a body the service cannot parse")
    return data


GATE = AccessGate(
    [
        Rule((ADMIN,), Role.of("the admin", ("root",), hint="--admin-token")),
        Rule((OPEN_TO_KEYS,), Role.of("a client", ("alpha", "beta"), hint="--api-key")),
    ]
)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()
    running = await start_server(
        "127.0.0.1:0",
        lambda server: server.add_generic_rpc_handlers((recorder.handler(),)),
        [SERVICE],
        interceptors=[GATE],
    )
    yield f"127.0.0.1:{running.port}", recorder
    await running.stop(0)


@pytest.fixture
async def served(server: tuple[str, Recorder]) -> AsyncIterator[tuple[grpc.aio.Channel, Recorder]]:
    async with grpc.aio.insecure_channel(server[0]) as channel:
        yield channel, server[1]


def unary(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(method, lambda b: b, lambda b: b)


async def refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), from_rpc_error(err.value).reason


async def test_missing_wrong_and_right_keys(served: tuple[grpc.aio.Channel, Recorder]) -> None:
    channel, recorder = served
    echo = unary(channel, method_name(SERVICE, "Echo"))
    assert await refusal(echo(b"x", timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_MISSING",
    )
    assert await refusal(echo(b"x", timeout=5, metadata=bearer_metadata("gamma"))) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "CREDENTIALS_INVALID",
    )
    basic = (("authorization", "Basic alpha"),)
    assert (await refusal(echo(b"x", timeout=5, metadata=basic)))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert recorder.ran == []
    for key in ("alpha", "beta"):
        assert await echo(b"x", timeout=5, metadata=bearer_metadata(key)) == b"x"
    assert await echo(b"y", timeout=5, metadata=(("authorization", "bearer   beta "),)) == b"y"
    assert recorder.ran == ["Echo", "Echo", "Echo"]


async def test_the_first_guard_that_covers_a_method_decides(
    served: tuple[grpc.aio.Channel, Recorder],
) -> None:
    channel, recorder = served
    admin = unary(channel, ADMIN)
    # An API key is not the admin token, though the service-wide guard would take it.
    assert (await refusal(admin(b"x", timeout=5, metadata=bearer_metadata("alpha"))))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert await admin(b"x", timeout=5, metadata=bearer_metadata("root")) == b"x"
    assert recorder.ran == ["Admin"]


async def test_a_refused_call_never_reaches_the_handler_nor_parses_the_body(
    served: tuple[grpc.aio.Channel, Recorder],
) -> None:
    channel, recorder = served
    echo = unary(channel, method_name(SERVICE, "Echo"))
    # Were the body parsed before the refusal, this would be INTERNAL, not UNAUTHENTICATED.
    assert (await refusal(echo(b"poison" * 1000, timeout=5)))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    watch = channel.unary_stream(method_name(SERVICE, "Watch"), lambda b: b, lambda b: b)
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in watch(b"poison", timeout=5):
            pass
    assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert recorder.ran == []
    # Control: a parsed poison body with a key is what the handler path does.
    assert (await refusal(echo(b"poison", timeout=5, metadata=bearer_metadata("alpha"))))[
        0
    ] != grpc.StatusCode.UNAUTHENTICATED


async def test_health_is_never_guarded(served: tuple[grpc.aio.Channel, Recorder]) -> None:
    channel, _ = served
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_client_interceptors_send_the_key_on_unary_and_streaming_calls(
    server: tuple[str, Recorder],
) -> None:
    address, recorder = server
    async with grpc.aio.insecure_channel(address, interceptors=bearer_interceptors("beta")) as ch:
        assert await unary(ch, method_name(SERVICE, "Echo"))(b"k", timeout=5) == b"k"
        watch = ch.unary_stream(method_name(SERVICE, "Watch"), lambda b: b, lambda b: b)
        assert [r async for r in watch(b"s", timeout=5)] == [b"s"]
    assert recorder.ran == ["Echo", "Watch"]


def test_a_gate_without_secrets_is_off_and_bearer_parsing() -> None:
    assert not AccessGate([Rule((OPEN_TO_KEYS,), Role.of("a client"))]).enabled
    assert GATE.error_for(method_name("other.Service", "X"), ()) is None
    assert bearer_token([("Authorization", "Bearer t")]) == "t"
    assert bearer_token([("authorization", b"Bearer t2")]) == "t2"
    assert bearer_token([("authorization", "Bearer ")]) is None
    assert bearer_metadata("") == ()
