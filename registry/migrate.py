"""Schema migrations (alembic), applied at start and by `modelyard registry migrate`.

Alembic runs on a synchronous connection borrowed from the async engine
(`AsyncConnection.run_sync`), inside one transaction: on PostgreSQL an advisory
lock in that transaction makes replicas that start together migrate one at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.database import create_engine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant shared by every replica ("modelya" in ASCII: fits a bigint).
ADVISORY_LOCK_ID = 0x6D6F64656C7961
# The skeleton release created its tables without alembic; they equal revision 0001.
UNVERSIONED_SCHEMA = "0001"


@dataclass(frozen=True)
class MigrationResult:
    before: str | None  # None: an empty database
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "registry/migrations/versions has no migration"
    return head


async def upgrade(engine: AsyncEngine, target: str = "head") -> MigrationResult:
    """Bring the schema to `target` (default: the newest); a no-op when it is there."""
    async with engine.begin() as conn:
        result = await conn.run_sync(_upgrade, target)
    if result.changed:
        log.info("catalogue schema migrated from %s to %s", result.before or "empty", result.after)
    return result


async def migrate_url(url: str, target: str = "head") -> MigrationResult:
    """`modelyard registry migrate`: connect, upgrade, disconnect."""
    engine = create_engine(url)
    try:
        return await upgrade(engine, target)
    finally:
        await engine.dispose()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection, target: str) -> MigrationResult:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": ADVISORY_LOCK_ID})
    before = _current(connection)
    config = alembic_config(connection)
    if before is None and inspect(connection).has_table("models"):
        command.stamp(config, UNVERSIONED_SCHEMA)
        before = UNVERSIONED_SCHEMA
    command.upgrade(config, target)
    after = _current(connection)
    assert after is not None
    return MigrationResult(before, after)
