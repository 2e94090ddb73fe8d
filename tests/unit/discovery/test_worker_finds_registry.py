"""A worker with Consul discovery and no registry address finds the registry there."""

from __future__ import annotations

from modelyard.discovery import REGISTRY_SERVICE
from modelyard.discovery.consul import register_service
from modelyard.server import RunningServer
from tests.consul_agent import ConsulAgentStandIn
from tests.unit.discovery.conftest import SERVICE, eventually, fast_settings
from worker.catalogue.consul import find_registry


async def test_the_healthy_registry_is_found(
    agent: ConsulAgentStandIn, grpc_server: RunningServer
) -> None:
    settings = fast_settings(agent)
    registration = register_service(
        name=REGISTRY_SERVICE,
        bind_address="127.0.0.1:0",
        port=grpc_server.port,
        grpc_service=SERVICE,
        settings=settings,
    )
    try:
        await eventually(lambda: bool(agent.service_ids(REGISTRY_SERVICE)))
        found = await find_registry(settings, wait_s=5.0)
    finally:
        await registration.close()
    assert found == f"127.0.0.1:{grpc_server.port}"


async def test_no_registry_is_an_empty_address(agent: ConsulAgentStandIn) -> None:
    assert await find_registry(fast_settings(agent), wait_s=0.5) == ""
