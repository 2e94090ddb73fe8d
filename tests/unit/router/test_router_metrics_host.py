"""The router's /metrics binds to metrics_host when it is set, not to the listen host."""

from __future__ import annotations

import asyncio

import pytest

from router.config import RouterSettings
from router.main import start_router
from tests.metrics_probe import OTHER_HOST, answers_metrics, free_port
from tests.unit.router.doubles import LOOP_SCOPE, RegistryUnderTest

pytestmark = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)


async def test_metrics_bind_to_metrics_host(registry: RegistryUnderTest) -> None:
    port = free_port()
    settings = RouterSettings(
        address="127.0.0.1:0",
        registry_address=registry.address,
        metrics_port=port,
        metrics_host=OTHER_HOST,
    )
    router = await start_router(settings)
    try:
        assert await asyncio.to_thread(answers_metrics, OTHER_HOST, port)
        assert not await asyncio.to_thread(answers_metrics, "127.0.0.1", port)
    finally:
        await router.stop()
