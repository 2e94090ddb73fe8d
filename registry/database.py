"""The engine under the store: SQLite settings, schema creation, the revision row."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from registry.tables import CATALOG_ID, Base, CatalogRow

log = logging.getLogger(__name__)

SQLITE_PRAGMAS = (
    # Readers never block the writer and the writer never blocks readers.
    "PRAGMA journal_mode=WAL",
    # Fsync at every commit: an acknowledged registration survives power loss.
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    # Another process holding the write lock is waited for, not an error.
    "PRAGMA busy_timeout=5000",
)


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(parsed, pool_pre_ping=True)
    _make_parent_dir(parsed)
    engine = create_async_engine(parsed)
    event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
    return engine


def _make_parent_dir(url: URL) -> None:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


async def create_schema(engine: AsyncEngine) -> None:
    """Create missing tables and the revision row (until migrations own the schema)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        found = await conn.scalar(select(CatalogRow.id).where(CatalogRow.id == CATALOG_ID))
        if found is None:
            await conn.execute(insert(CatalogRow).values(id=CATALOG_ID, revision=0))
    log.debug("schema ready on %s", engine.url.render_as_string(hide_password=True))
