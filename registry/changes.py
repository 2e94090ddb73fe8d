"""The change log: one row per revision, what Watch replays after a given revision."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.v1 import registry_pb2
from registry.tables import CATALOG_ID, CatalogRow, ChangeRow


async def current_revision(session: AsyncSession) -> int:
    return await session.scalar(select(CatalogRow.revision).where(CatalogRow.id == CATALOG_ID)) or 0


async def bump_revision(session: AsyncSession) -> int:
    """The next revision. As the first statement of a write it takes the write lock:
    SQLite's database lock, PostgreSQL's row lock on the one catalog row, so
    writers of every replica commit one at a time, in revision order."""
    result = await session.execute(
        update(CatalogRow)
        .where(CatalogRow.id == CATALOG_ID)
        .values(revision=CatalogRow.revision + 1)
        .returning(CatalogRow.revision)
    )
    return result.scalar_one()


def record(session: AsyncSession, change: registry_pb2.CatalogChange) -> None:
    session.add(
        ChangeRow(
            revision=change.revision,
            kind=change.kind,
            payload=change.SerializeToString(deterministic=True),
            created_at=datetime.now(UTC),
        )
    )


async def prune(session: AsyncSession, revision: int, retain: int) -> None:
    """Keep the last `retain` changes; older watchers get a snapshot instead."""
    if retain > 0 and revision > retain:
        await session.execute(delete(ChangeRow).where(ChangeRow.revision <= revision - retain))


async def read_after(
    session: AsyncSession, revision: int, limit: int
) -> list[registry_pb2.CatalogChange]:
    payloads = await session.scalars(
        select(ChangeRow.payload)
        .where(ChangeRow.revision > revision)
        .order_by(ChangeRow.revision)
        .limit(limit)
    )
    return [registry_pb2.CatalogChange.FromString(p) for p in payloads]
