"""The Consul stand-in and small gRPC servers whose health the stand-in checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio

from modelyard.discovery import DiscoverySettings
from modelyard.server import RunningServer, start_server
from tests.consul_agent import ConsulAgentStandIn

SERVICE = "modelyard.test.Dummy"


@pytest.fixture
def agent() -> Iterator[ConsulAgentStandIn]:
    with ConsulAgentStandIn() as standin:
        yield standin


def fast_settings(agent: ConsulAgentStandIn, **overrides: object) -> DiscoverySettings:
    """Settings that make checks and blocking queries quick enough for tests."""
    values: dict[str, object] = {
        "address": agent.address,
        "check_interval_s": 0.1,
        "check_timeout_s": 1.0,
        "wait_s": 2.0,
        "deregister_wait_s": 0.0,
        **overrides,
    }
    return DiscoverySettings.model_validate(values)


@pytest_asyncio.fixture
async def grpc_server() -> AsyncIterator[RunningServer]:
    """A server answering grpc.health.v1 for SERVICE (SERVING until a test says otherwise)."""
    running = await start_server("127.0.0.1:0", lambda server: None, [SERVICE])
    try:
        yield running
    finally:
        await running.server.stop(0)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until `predicate()` holds; fail the test after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
