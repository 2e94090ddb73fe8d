"""Alembic owns the schema: it matches the tables, upgrades skeleton databases, is idempotent."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from registry.database import create_engine
from registry.migrate import current_revision, head_revision, upgrade
from registry.store import open_store
from registry.tables import Base
from tests.unit.registry.factories import make_model


def _diff(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def test_migrations_build_exactly_the_declared_schema(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        first = await upgrade(engine)
        again = await upgrade(engine)
        async with engine.connect() as conn:
            differences = await conn.run_sync(_diff)
    finally:
        await engine.dispose()

    assert first.before is None and first.after == head_revision()
    assert not again.changed
    assert differences == []


async def test_a_skeleton_database_without_alembic_is_stamped_and_upgraded(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    # What the skeleton release's create_all left: revision 0001's tables, no version table.
    await upgrade(engine, "0001")
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE alembic_version"))
    await engine.dispose()

    store = await open_store(url)
    try:
        assert await current_revision(store.engine) == head_revision()
        async with store.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"routes", "route_refs", "models"} <= tables
        assert (await store.register(make_model())).revision == 1
    finally:
        await store.close()
