"""RegistryStore: the catalogue of model versions and routes, over SQLAlchemy's asyncio API.

Every write runs in one transaction that first bumps the catalogue revision
(which serializes writers, across processes and replicas too), then changes the
rows and records one change row for Watch. A write that turns out to change
nothing rolls back, so the revision moves only with a real change. After the
commit the watch hub wakes this process's watchers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from modelyard.errors import InvalidArgument
from modelyard.v1 import model_pb2, registry_pb2
from registry import changes, convert, metrics, models, routes
from registry.change_reads import SharedChangeReads
from registry.database import create_engine, is_sqlite
from registry.migrate import upgrade
from registry.models import ModelFilter
from registry.paging import PageKey, decode_token, encode_token, page_size_of
from registry.rollout import status as rollout_status
from registry.rollout.edit import RouteEdit
from registry.snapshots import SharedSnapshots
from registry.tables import ModelRow, RouteRow
from registry.validation import validate_route
from registry.watch import BATCH, WatchHub, watch

log = logging.getLogger(__name__)

__all__ = ["ModelFilter", "RegistryStore", "open_store"]

# Changes kept for Watch to replay; a watcher further behind gets a snapshot.
DEFAULT_CHANGE_RETENTION = 10_000
SETTABLE_STAGES = (model_pb2.STAGE_STAGING, model_pb2.STAGE_PRODUCTION, model_pb2.STAGE_ARCHIVED)


@dataclass(frozen=True)
class RegisterResult:
    model: model_pb2.Model
    created: bool  # False: an identical version already existed
    revision: int  # the catalogue revision after the call


class ModelPage(NamedTuple):
    models: list[model_pb2.Model]
    next_page_token: str  # empty on the last page
    revision: int  # the catalogue revision the page was read at


class RouteList(NamedTuple):
    routes: list[model_pb2.Route]
    revision: int


@dataclass
class _Write:
    """One write transaction; `change` stays None when the write changed nothing.

    A write may record more changes (`also`, e.g. a rollout's promotion: the route and
    the model's stage); each takes the next revision, all commit together.
    """

    session: AsyncSession
    revision: int
    change: registry_pb2.CatalogChange | None = field(default=None)
    more: list[registry_pb2.CatalogChange] = field(default_factory=list)

    def record(
        self,
        kind: registry_pb2.ChangeKind.ValueType,
        *,
        model: model_pb2.Model | None = None,
        route: model_pb2.Route | None = None,
    ) -> None:
        self.change = registry_pb2.CatalogChange(
            revision=self.revision, kind=kind, model=model, route=route
        )

    async def also(
        self, kind: registry_pb2.ChangeKind.ValueType, *, model: model_pb2.Model
    ) -> None:
        """One more change after `record`'s, at the next revision."""
        self.revision = await changes.bump_revision(self.session)
        self.more.append(registry_pb2.CatalogChange(revision=self.revision, kind=kind, model=model))


async def open_store(
    url: str, *, change_retention: int = DEFAULT_CHANGE_RETENTION, poll_interval_s: float = 1.0
) -> RegistryStore:
    """Connect, migrate the schema to the newest, and return the store (close it when done)."""
    engine = create_engine(url)
    try:
        await upgrade(engine)
        store = RegistryStore(
            engine, change_retention=change_retention, poll_interval_s=poll_interval_s
        )
        store.hub.advance(await store.revision())
    except BaseException:
        await engine.dispose()
        raise
    return store


class RegistryStore:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        change_retention: int = DEFAULT_CHANGE_RETENTION,
        poll_interval_s: float = 1.0,
    ) -> None:
        if change_retention < 1:
            raise ValueError("change_retention must be at least 1")
        self.engine = engine
        self.change_retention = change_retention
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Within this process, queue writers here rather than in the database's lock wait.
        self._write_lock = asyncio.Lock()
        self.hub = WatchHub(self.revision, poll_interval_s)
        self._snapshots = SharedSnapshots(self._read_snapshot)
        self._change_reads = SharedChangeReads(self._read_changes)

    async def close(self) -> None:
        await self.hub.close()
        await self.engine.dispose()

    async def revision(self) -> int:
        """The current catalogue revision (0 before the first write)."""
        async with self._sessions() as session:
            return await changes.current_revision(session)

    # -- models ------------------------------------------------------------------

    async def register(self, model: model_pb2.Model) -> RegisterResult:
        """Add a version; identical content again is a no-op, different content ALREADY_EXISTS."""
        model = models.validated(model)
        async with self._write() as write:
            existing = await models.find(write.session, model.name, model.version)
            if existing is not None:
                models.check_same_version(existing, model)
                return RegisterResult(convert.row_to_model(existing), False, write.revision - 1)
            await models.check_not_a_route(write.session, model.name)
            stored = await models.insert(write.session, model, datetime.now(UTC))
            write.record(registry_pb2.CHANGE_KIND_MODEL_PUT, model=stored)
        log.info("registered model %s@%s at revision %d", model.name, model.version, write.revision)
        return RegisterResult(stored, True, write.revision)

    async def get(self, name: str, version: str = "") -> model_pb2.Model:
        """One version; empty means the newest in production, else the newest not archived."""
        async with self._sessions() as session:
            return convert.row_to_model(await models.resolve(session, name, version))

    async def list_models(
        self, filters: ModelFilter = ModelFilter(), *, page_size: int = 0, page_token: str = ""
    ) -> ModelPage:
        """One page of versions sorted by name, newest first within a name."""
        size = page_size_of(page_size)
        conditions = filters.conditions()
        fingerprint = filters.fingerprint()
        if page_token:
            after = decode_token(page_token, fingerprint)
            conditions.append(
                or_(
                    ModelRow.name > after.name,
                    and_(ModelRow.name == after.name, ModelRow.id < after.id),
                )
            )
        query = (
            select(ModelRow)
            .where(*conditions)
            .order_by(ModelRow.name, ModelRow.id.desc())
            .limit(size + 1)  # one extra row says whether another page exists
        )
        async with self._reading() as session:
            revision = await changes.current_revision(session)
            rows = (await session.scalars(query)).all()
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = encode_token(PageKey(rows[-1].name, rows[-1].id), fingerprint)
        return ModelPage([convert.row_to_model(r) for r in rows], token, revision)

    async def set_stage(
        self, name: str, version: str, stage: model_pb2.Stage.ValueType
    ) -> tuple[model_pb2.Model, int]:
        """Move a version to a stage; the same stage again changes nothing.

        Archiving what a route needs is FAILED_PRECONDITION (archived versions
        are not routable).
        """
        if stage not in SETTABLE_STAGES:
            raise InvalidArgument.for_field(
                "stage", "must be STAGE_STAGING, STAGE_PRODUCTION or STAGE_ARCHIVED"
            )
        async with self._write() as write:
            row = await models.find_exact(write.session, name, version)
            if row.stage == stage:
                return convert.row_to_model(row), write.revision - 1
            if stage == model_pb2.STAGE_ARCHIVED:
                await routes.check_model_unused(write.session, name, version, action="archive")
            row.stage, row.updated_at = stage, datetime.now(UTC)
            stored = convert.row_to_model(row)
            write.record(registry_pb2.CHANGE_KIND_MODEL_PUT, model=stored)
        log.info(
            "model %s@%s now %s at revision %d",
            name,
            version,
            model_pb2.Stage.Name(stage),
            write.revision,
        )
        return stored, write.revision

    async def delete_model(self, name: str, version: str) -> int:
        """Remove a version (NOT_FOUND if absent); FAILED_PRECONDITION while a route needs it."""
        if not version:
            raise InvalidArgument.for_field("version", "required: versions are deleted one by one")
        async with self._write() as write:
            row = await models.find_exact(write.session, name, version)
            await routes.check_model_unused(write.session, name, version, action="delete")
            await write.session.delete(row)
            write.record(
                registry_pb2.CHANGE_KIND_MODEL_DELETED,
                model=model_pb2.Model(name=name, version=version),
            )
        log.info("deleted model %s@%s at revision %d", name, version, write.revision)
        return write.revision

    # -- routes ------------------------------------------------------------------

    async def put_route(self, route: model_pb2.Route) -> tuple[model_pb2.Route, int]:
        """Create or replace a route; identical content again changes nothing."""
        async with self._write() as write:
            valid = validate_route(route, await routes.facts_for(write.session, route))
            existing = await routes.find(write.session, valid.route.name)
            now = datetime.now(UTC)
            old = None if existing is None else routes.row_to_route(existing)
            rollout_status.set_server_fields(valid.route, old, now)
            if existing is not None and existing.spec == valid.route.SerializeToString(
                deterministic=True
            ):
                return routes.row_to_route(existing), write.revision - 1
            stored = await routes.save(write.session, valid, now)
            write.record(registry_pb2.CHANGE_KIND_ROUTE_PUT, route=stored)
        log.info("put route %s at revision %d", stored.name, write.revision)
        return stored, write.revision

    async def edit_route(self, name: str, edit: RouteEdit) -> tuple[model_pb2.Route, int] | None:
        """Apply `edit` (a rollout decision) to the stored route in one write: the route
        and a promoted version's stage change together. None when the edit declined."""
        async with self._write() as write:
            now = datetime.now(UTC)
            edited = await edit(write.session, await routes.get(write.session, name), now)
            if edited is None:
                return None
            stored = await routes.save_spec(write.session, edited.route, now)
            write.record(registry_pb2.CHANGE_KIND_ROUTE_PUT, route=stored)
            if edited.promote is not None:
                row = await models.find_exact(write.session, *edited.promote)
                if row.stage != model_pb2.STAGE_PRODUCTION:
                    row.stage, row.updated_at = model_pb2.STAGE_PRODUCTION, now
                    model = convert.row_to_model(row)
                    await write.also(registry_pb2.CHANGE_KIND_MODEL_PUT, model=model)
        log.info("rollout of route %s changed at revision %d", name, write.revision)
        return stored, write.revision

    async def get_route(self, name: str) -> model_pb2.Route:
        async with self._sessions() as session:
            return await routes.get(session, name)

    async def list_routes(self) -> RouteList:
        async with self._reading() as session:
            revision = await changes.current_revision(session)
            return RouteList(await routes.list_all(session), revision)

    async def delete_route(self, name: str) -> int:
        """Remove a route (NOT_FOUND if absent); FAILED_PRECONDITION while it is a fallback."""
        async with self._write() as write:
            await routes.get(write.session, name)
            await routes.check_route_unused(write.session, name)
            row = await routes.find(write.session, name)
            await write.session.delete(row)
            write.record(registry_pb2.CHANGE_KIND_ROUTE_DELETED, route=model_pb2.Route(name=name))
        log.info("deleted route %s at revision %d", name, write.revision)
        return write.revision

    # -- watch ---------------------------------------------------------------------

    async def snapshot(self) -> registry_pb2.WatchResponse:
        """The whole catalogue at one revision (at least the current one) as a Watch
        event, shared by the watchers that ask for it at once (`registry.snapshots`):
        read it, never change it."""
        return await self._snapshots.at(self.hub.latest)

    @property
    def snapshot_reads(self) -> int:
        """Snapshots read from the database so far (watchers share them)."""
        return self._snapshots.reads

    @property
    def snapshot_encodings(self) -> int:
        """Snapshots serialized for the wire so far (watchers share those too)."""
        return self._snapshots.encodings

    def wire(self, event: registry_pb2.WatchResponse) -> registry_pb2.WatchResponse | bytes:
        """What a Watch stream sends for `event`: a shared snapshot as the bytes every
        watcher is sent, anything else as it is (serialized per stream by gRPC)."""
        encoded = self._snapshots.encoded(event)
        return event if encoded is None else encoded

    async def _read_snapshot(self) -> registry_pb2.WatchResponse:
        """The whole catalogue at one revision, read in one consistent transaction."""
        async with self._reading() as session:
            revision = await changes.current_revision(session)
            rows = await session.scalars(select(ModelRow).order_by(ModelRow.name, ModelRow.id))
            all_models = [convert.row_to_model(r) for r in rows]
            route_rows = await session.scalars(select(RouteRow).order_by(RouteRow.name))
            all_routes = [routes.row_to_route(r) for r in route_rows]
        snapshot = registry_pb2.CatalogSnapshot(
            revision=revision, models=all_models, routes=all_routes
        )
        return registry_pb2.WatchResponse(snapshot=snapshot)

    async def changes_after(
        self, revision: int, limit: int
    ) -> tuple[list[registry_pb2.CatalogChange], int]:
        """Up to `limit` changes after `revision`, and the current revision; watchers
        asking at once share one read (`registry.change_reads`)."""
        return await self._change_reads.after(revision, limit)

    @property
    def change_reads(self) -> int:
        """Change-log reads made for watchers so far."""
        return self._change_reads.reads

    async def _read_changes(
        self, revision: int, limit: int
    ) -> tuple[list[registry_pb2.CatalogChange], int]:
        async with self._reading() as session:
            current = await changes.current_revision(session)
            return await changes.read_after(session, revision, limit), current

    def watch(
        self, since_revision: int = 0, *, batch: int = BATCH
    ) -> AsyncGenerator[registry_pb2.WatchResponse]:
        """Snapshot (unless resuming), then every change in order; see `registry.watch`."""
        return watch(self, self.hub, since_revision, batch=batch)

    # -- transactions -----------------------------------------------------------

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncSession]:
        """A read transaction that sees one committed state for all its queries."""
        async with self._sessions() as session:
            if not is_sqlite(self.engine):
                # SQLite's BEGIN already gives a snapshot (see registry.database).
                await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[_Write]:
        async with self._write_lock, self._sessions() as session:
            write = _Write(session, await changes.bump_revision(session))
            yield write
            if write.change is None:
                await session.rollback()  # nothing changed: the revision stays
                return
            for change in (write.change, *write.more):
                changes.record(session, change)
            await changes.prune(session, write.revision, self.change_retention)
            await session.commit()
        for change in (write.change, *write.more):
            metrics.count_write(change.kind, change.revision)
        self.hub.advance(write.revision)
