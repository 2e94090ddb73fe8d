"""Fixtures of the registry suite: every store test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from registry.store import RegistryStore, open_store
from tests import postgres

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """One database for the whole session on the test server."""
    server = postgres.server_url()
    url = postgres.create_test_database(server)
    yield url
    postgres.drop_test_database(server, url)


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty catalogue database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
        return
    url: str = request.getfixturevalue("postgres_database")
    await postgres.reset_database(url)
    yield url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[RegistryStore]:
    opened = await open_store(database_url, poll_interval_s=0.2)
    yield opened
    await opened.close()
