"""The registry's /metrics binds to metrics_host when it is set, not to the listen host,
and stops with the registry."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from registry.config import RegistrySettings
from registry.main import serve
from tests.metrics_probe import OTHER_HOST, answers_metrics, free_port


async def test_metrics_bind_to_metrics_host(tmp_path: Path) -> None:
    port = free_port()
    settings = RegistrySettings(
        address="127.0.0.1:0",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
        metrics_port=port,
        metrics_host=OTHER_HOST,
    )
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(settings, on_ready=ready.set_result))
    await asyncio.wait_for(ready, 10)

    assert await asyncio.to_thread(answers_metrics, OTHER_HOST, port)
    assert not await asyncio.to_thread(answers_metrics, "127.0.0.1", port)

    os.kill(os.getpid(), signal.SIGTERM)  # serve() handles it: see test_registry_service
    await asyncio.wait_for(server, 10)
    assert not await asyncio.to_thread(answers_metrics, OTHER_HOST, port)
