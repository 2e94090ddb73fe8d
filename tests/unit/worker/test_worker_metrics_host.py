"""The worker's /metrics binds to metrics_host when it is set, not to the listen host."""

from __future__ import annotations

import asyncio

from tests.metrics_probe import OTHER_HOST, answers_metrics, free_port
from worker.config import WorkerSettings
from worker.main import start_worker


async def test_metrics_bind_to_metrics_host() -> None:
    port = free_port()
    settings = WorkerSettings(
        address="127.0.0.1:0", threads=1, metrics_port=port, metrics_host=OTHER_HOST
    )
    worker = await start_worker(settings)
    try:
        assert await asyncio.to_thread(answers_metrics, OTHER_HOST, port)
        assert not await asyncio.to_thread(answers_metrics, "127.0.0.1", port)
    finally:
        await worker.stop(grace_s=0)
