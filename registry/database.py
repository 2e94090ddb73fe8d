"""The engine under the store: SQLite settings and transactions, PostgreSQL pool."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

SQLITE_PRAGMAS = (
    # Readers never block the writer and the writer never blocks readers.
    "PRAGMA journal_mode=WAL",
    # Fsync at every commit: an acknowledged write survives power loss.
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    # Another process holding the write lock is waited for, not an error.
    "PRAGMA busy_timeout=10000",
)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # pre_ping: a replica survives a PostgreSQL restart without failing the next call.
        return create_async_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=10)
    _make_parent_dir(parsed)
    engine = create_async_engine(parsed)
    event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
    event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
    return engine


def _make_parent_dir(url: URL) -> None:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module only opens a transaction before DML, so two SELECTs of
    # one "transaction" could see different commits. Take over BEGIN (below) so
    # that a read transaction is a real snapshot, as Watch's snapshot needs.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


# Execution option of a session that reads before it writes: BEGIN IMMEDIATE takes the
# write lock up front (waiting out busy_timeout). A deferred BEGIN's read snapshot cannot
# become a write once another connection has committed: SQLite fails the write at once
# with "database is locked", whatever busy_timeout says.
WRITE_FIRST = {"sqlite_immediate": True}


def _on_sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
