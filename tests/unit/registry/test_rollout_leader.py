"""One rollout controller among registry replicas on real PostgreSQL: the advisory lock
goes to one replica, stays with it while it lives, and passes on when its connection dies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from registry.rollout.leader import LOCK_ID, Leadership


@pytest.fixture
async def engines(postgres_database: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """Two replicas: two engines (pools) on one database."""
    first, second = create_async_engine(postgres_database), create_async_engine(postgres_database)
    yield first, second
    await first.dispose()
    await second.dispose()


async def test_one_replica_leads_until_its_connection_dies(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    first, second = Leadership(engines[0]), Leadership(engines[1])
    assert first.shared and second.shared
    assert await first.hold()
    assert not await second.hold()
    assert await first.hold()  # keeps it across ticks
    assert not await second.hold()
    # The leader's process dies: its session ends on the server, and the lock with it.
    async with engines[1].connect() as admin:
        # A bigint advisory key shows as classid (high 32 bits), objid (low), objsubid 1.
        killed = await admin.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                " AND classid = :high AND objid = :low"
            ),
            {"high": LOCK_ID >> 32, "low": LOCK_ID & 0xFFFFFFFF},
        )
    assert killed == 1
    # pg_terminate_backend only signals the backend: the lock goes when it has exited.
    assert await _eventually(second.hold)
    assert not await first.hold()  # notices its lost connection, and the lock is taken
    await second.release()
    assert await first.hold()  # a released lock is free at the next tick
    await first.release()


async def _eventually(hold: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while not await hold():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_sqlite_always_leads() -> None:
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    try:
        assert await Leadership(engine).hold()
    finally:
        await engine.dispose()
