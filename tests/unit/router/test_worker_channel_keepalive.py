"""The router's worker channels ping (HTTP/2 keepalive, to find a stopped worker), and
servers accept those pings: a server that counted them as abuse would GOAWAY the
channel (too_many_pings) and every idle router would reconnect to its workers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelyard.channel_options import CHANNEL_OPTIONS
from modelyard.server import start_server
from router.workers import plaintext_channel

pytestmark = pytest.mark.asyncio(loop_scope="session")


def option(name: str) -> int:
    return int(dict(CHANNEL_OPTIONS)[name])


async def test_idle_worker_channels_ping_and_stay_connected() -> None:
    assert option("grpc.keepalive_permit_without_calls") == 1
    ping_s = option("grpc.keepalive_time_ms") / 1000
    server = await start_server("127.0.0.1:0", lambda s: None, [])
    channel = plaintext_channel(f"127.0.0.1:{server.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        # Idle for three pings: a server refusing them GOAWAYs after its second strike.
        left = asyncio.get_running_loop().time() + 3.5 * ping_s
        states = set()
        while asyncio.get_running_loop().time() < left:
            states.add(channel.get_state())
            await asyncio.sleep(0.2)
        assert states == {grpc.ChannelConnectivity.READY}
    finally:
        await channel.close()
        await server.stop(0)
