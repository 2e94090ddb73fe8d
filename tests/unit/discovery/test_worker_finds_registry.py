"""A worker with Consul discovery and no registry address resolves models through the
registry Consul lists (the Consul stand-in, tests/consul_agent.py; real registry servicers
on loopback): one that appears after the worker started, and one that replaces it."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from modelyard.discovery import REGISTRY_SERVICE, DiscoverySettings
from modelyard.discovery.consul import Registration, register_service
from modelyard.errors import ModelyardError
from modelyard.refs import model_key
from modelyard.server import RunningServer, start_server
from modelyard.v1 import model_pb2
from registry.auth import SERVICE_NAME
from registry.service import add_to_server
from registry.store import open_store
from tests.consul_agent import ConsulAgentStandIn
from tests.unit.discovery.conftest import eventually, fast_settings
from worker.catalogue.build import open_catalogue
from worker.catalogue.consul import ConsulRegistryCatalogue
from worker.config import WorkerSettings


@asynccontextmanager
async def registry_with(tmp_path: Path, name: str) -> AsyncIterator[RunningServer]:
    """A registry whose only model, m@1, names its artifact after the registry."""
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / name}.db")
    await store.register(
        model_pb2.Model(
            name="m",
            version="1",
            artifact=model_pb2.Artifact(uri=f"file:///{name}.gguf", sha256="ab" * 32),
        )
    )
    running = await start_server(
        "127.0.0.1:0", functools.partial(add_to_server, store), [SERVICE_NAME]
    )
    try:
        yield running
    finally:
        await running.server.stop(0)
        await store.close()


def listed(server: RunningServer, settings: DiscoverySettings, name: str) -> Registration:
    return register_service(
        name=REGISTRY_SERVICE,
        bind_address="127.0.0.1:0",
        port=server.port,
        grpc_service=SERVICE_NAME,
        service_id=name,
        settings=settings,
    )


async def artifact_of(catalogue: ConsulRegistryCatalogue) -> str:
    return (await catalogue.resolve(model_key("m", "1"))).artifact.uri


async def test_a_registry_that_appears_later_then_moves_is_followed(
    agent: ConsulAgentStandIn, tmp_path: Path
) -> None:
    settings = fast_settings(agent)
    catalogue = open_catalogue(WorkerSettings(registry_timeout_s=2.0), settings)
    assert isinstance(catalogue, ConsulRegistryCatalogue)
    try:
        # Nothing listed past the start's grace: UNAVAILABLE, saying what to do.
        catalogue._waits_until = 0.0
        with pytest.raises(ModelyardError) as none_yet:
            await artifact_of(catalogue)
        assert none_yet.value.reason == "NO_REGISTRY"
        assert "MODELYARD_WORKER_REGISTRY_ADDRESS" in none_yet.value.message

        async with registry_with(tmp_path, "a") as a, registry_with(tmp_path, "b") as b:
            first = listed(a, settings, "a")
            await eventually(lambda: catalogue.current is not None, 10)
            assert await artifact_of(catalogue) == "file:///a.gguf"

            second = listed(b, settings, "b")
            await eventually(lambda: set(agent.service_ids(REGISTRY_SERVICE)) == {"a", "b"})
            assert await artifact_of(catalogue) == "file:///a.gguf"  # a is still listed: kept
            await first.close()  # a leaves Consul (and then stops)
            await eventually(
                lambda: (
                    catalogue.current is not None
                    and catalogue.current.address.endswith(f":{b.port}")
                ),
                10,
            )
            assert await artifact_of(catalogue) == "file:///b.gguf"
            await second.close()
            await eventually(lambda: not agent.service_ids(REGISTRY_SERVICE))
            # None listed: the last registry is kept, not dropped.
            assert await artifact_of(catalogue) == "file:///b.gguf"
    finally:
        await catalogue.close()


async def test_a_resolve_at_start_waits_for_consuls_first_answer(
    agent: ConsulAgentStandIn, tmp_path: Path
) -> None:
    settings = fast_settings(agent)
    async with registry_with(tmp_path, "a") as a:
        registration = listed(a, settings, "a")
        try:
            await eventually(lambda: bool(agent.service_ids(REGISTRY_SERVICE)))
            catalogue = open_catalogue(WorkerSettings(registry_timeout_s=2.0), settings)
            try:
                # Straight after the start (a preload): no UNAVAILABLE while Consul answers.
                assert isinstance(catalogue, ConsulRegistryCatalogue)
                assert await artifact_of(catalogue) == "file:///a.gguf"
            finally:
                await catalogue.close()
        finally:
            await registration.close()
