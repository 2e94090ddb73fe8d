"""ModelStore: the catalogue of model versions, over SQLAlchemy's asyncio API.

Every write bumps the one catalogue revision and records a change row in the
same transaction, which is what Watch will replay. Incrementing the revision
row is the first statement of every write, so it doubles as the write lock:
writers serialize on it (across processes too), and a write that turns out to
change nothing rolls it back.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from sqlalchemy import ColumnElement, and_, case, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from modelyard.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from modelyard.refs import check_name, check_version
from modelyard.v1 import model_pb2, registry_pb2
from registry import convert
from registry.database import create_engine, create_schema
from registry.paging import PageKey, decode_token, encode_token, page_size_of
from registry.selectors import Op, Requirement, parse_label_selector
from registry.tables import CATALOG_ID, CatalogRow, ChangeRow, ModelLabelRow, ModelRow, ModelTagRow

log = logging.getLogger(__name__)

STAGES = frozenset(model_pb2.Stage.values())
# How many names or versions a NOT_FOUND message lists before "and N more".
HINT_LIMIT = 10


@dataclass(frozen=True)
class RegisterResult:
    model: model_pb2.Model
    created: bool  # False: an identical version already existed
    revision: int  # the catalogue revision after the call


class ModelPage(NamedTuple):
    models: list[model_pb2.Model]
    next_page_token: str  # empty on the last page
    revision: int  # the catalogue revision the page was read at (or newer)


@dataclass(frozen=True)
class ModelFilter:
    """ListModels filters; empty fields match everything."""

    name: str = ""
    stage: model_pb2.Stage.ValueType = model_pb2.STAGE_UNSPECIFIED
    require_chat: bool = False
    require_completion: bool = False
    tags: tuple[str, ...] = ()
    label_selector: str = ""

    def fingerprint(self) -> str:
        key = [
            self.name,
            int(self.stage),
            self.require_chat,
            self.require_completion,
            sorted(set(self.tags)),
            self.label_selector.strip(),
        ]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


async def open_store(url: str) -> ModelStore:
    """Connect, create the schema if missing, and return the store (close it when done)."""
    engine = create_engine(url)
    try:
        await create_schema(engine)
    except BaseException:
        await engine.dispose()
        raise
    return ModelStore(engine)


class ModelStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Within this process, queue writers here rather than in SQLite's busy wait.
        self._write_lock = asyncio.Lock()

    async def close(self) -> None:
        await self.engine.dispose()

    async def revision(self) -> int:
        """The current catalogue revision (0 before the first write)."""
        async with self._sessions() as session:
            return await _current_revision(session)

    async def register(self, model: model_pb2.Model) -> RegisterResult:
        """Add a version; identical content again is a no-op, different content ALREADY_EXISTS."""
        model = _validated(model)
        async with self._write_lock, self._sessions() as session:
            revision = await _bump_revision(session)
            existing = await _find(session, model.name, model.version)
            if existing is not None:
                _check_same_version(existing, model)
                # Leaving without commit rolls back the bump: nothing was written.
                return RegisterResult(convert.row_to_model(existing), False, revision - 1)
            row = convert.new_row(model, datetime.now(UTC))
            session.add(row)
            await session.flush()  # assigns row.id for the tag and label rows
            session.add_all(convert.tag_rows(row.id, model))
            session.add_all(convert.label_rows(row.id, model))
            stored = convert.row_to_model(row)
            _record_change(session, revision, registry_pb2.CHANGE_KIND_MODEL_PUT, stored)
            await session.commit()
        log.info("registered model %s@%s at revision %d", model.name, model.version, revision)
        return RegisterResult(stored, True, revision)

    async def get(self, name: str, version: str = "") -> model_pb2.Model:
        """One version; empty means the newest in production, else the newest not archived."""
        check_name(name, "name")
        if version:
            check_version(version, "version")
        async with self._sessions() as session:
            if version:
                row = await _find(session, name, version)
            else:
                row = await session.scalar(
                    select(ModelRow)
                    .where(ModelRow.name == name, ModelRow.stage != model_pb2.STAGE_ARCHIVED)
                    .order_by(
                        case((ModelRow.stage == model_pb2.STAGE_PRODUCTION, 0), else_=1),
                        ModelRow.id.desc(),
                    )
                    .limit(1)
                )
            if row is None:
                raise await _not_found(session, name, version)
            return convert.row_to_model(row)

    async def list_models(
        self, filters: ModelFilter = ModelFilter(), *, page_size: int = 0, page_token: str = ""
    ) -> ModelPage:
        """One page of versions sorted by name, newest first within a name."""
        size = page_size_of(page_size)
        conditions = _conditions(filters)
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
        async with self._sessions() as session:
            # Revision first: the page may then be newer than it, never older, so a
            # watcher resuming from it sees every later change (some twice, harmlessly).
            revision = await _current_revision(session)
            rows = (await session.scalars(query)).all()
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = encode_token(PageKey(rows[-1].name, rows[-1].id), fingerprint)
        return ModelPage([convert.row_to_model(r) for r in rows], token, revision)


def _validated(model: model_pb2.Model) -> model_pb2.Model:
    """A copy ready to store, or INVALID_ARGUMENT listing every bad field."""
    violations: list[FieldViolation] = []
    for check, value, field in (
        (check_name, model.name, "model.name"),
        (check_version, model.version, "model.version"),
    ):
        try:
            check(value, field)
        except InvalidArgument as err:
            violations += err.violations
    if not model.artifact.uri:
        violations.append(
            FieldViolation("model.artifact.uri", "required: where the weights live, e.g. file:///…")
        )
    if model.stage not in STAGES:
        violations.append(FieldViolation("model.stage", f"unknown stage {model.stage}"))
    if violations:
        raise InvalidArgument.for_violations(violations)
    clean = model_pb2.Model()
    clean.CopyFrom(model)
    clean.ClearField("created_at")
    clean.ClearField("updated_at")
    if clean.stage == model_pb2.STAGE_UNSPECIFIED:
        clean.stage = model_pb2.STAGE_STAGING
    return clean


def _check_same_version(existing: ModelRow, model: model_pb2.Model) -> None:
    stored = convert.row_to_model(existing)
    ref = f"{model.name}@{model.version}"
    differing = convert.differing_fields(stored, model)
    if differing:
        raise AlreadyExists(
            f"model {ref} already exists with a different {', '.join(differing)}; "
            "versions are immutable: register the change as a new version",
            reason="MODEL_VERSION_EXISTS",
            metadata={"model": model.name, "version": model.version, "fields": ",".join(differing)},
        )
    # Stage is not content (SetStage moves it), so re-running a registration
    # after a promotion is fine; only asking for another non-default stage conflicts.
    if model.stage != stored.stage and model.stage != model_pb2.STAGE_STAGING:
        raise AlreadyExists(
            f"model {ref} already exists in stage {model_pb2.Stage.Name(stored.stage)}; "
            "registering does not change stages: use SetStage",
            reason="MODEL_VERSION_EXISTS",
            metadata={"model": model.name, "version": model.version, "fields": "stage"},
        )


async def _find(session: AsyncSession, name: str, version: str) -> ModelRow | None:
    return await session.scalar(
        select(ModelRow).where(ModelRow.name == name, ModelRow.version == version)
    )


async def _current_revision(session: AsyncSession) -> int:
    return await session.scalar(select(CatalogRow.revision).where(CatalogRow.id == CATALOG_ID)) or 0


async def _bump_revision(session: AsyncSession) -> int:
    result = await session.execute(
        update(CatalogRow)
        .where(CatalogRow.id == CATALOG_ID)
        .values(revision=CatalogRow.revision + 1)
        .returning(CatalogRow.revision)
    )
    return result.scalar_one()


def _record_change(
    session: AsyncSession,
    revision: int,
    kind: registry_pb2.ChangeKind.ValueType,
    model: model_pb2.Model,
) -> None:
    change = registry_pb2.CatalogChange(revision=revision, kind=kind, model=model)
    session.add(
        ChangeRow(
            revision=revision,
            kind=kind,
            payload=change.SerializeToString(deterministic=True),
            created_at=datetime.now(UTC),
        )
    )


def _conditions(filters: ModelFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.name:
        check_name(filters.name, "name")
        conditions.append(ModelRow.name == filters.name)
    if filters.stage not in STAGES:
        raise InvalidArgument.for_field("stage", f"unknown stage {filters.stage}")
    if filters.stage != model_pb2.STAGE_UNSPECIFIED:
        conditions.append(ModelRow.stage == filters.stage)
    if filters.require_chat:
        conditions.append(ModelRow.chat.is_(True))
    if filters.require_completion:
        conditions.append(ModelRow.completion.is_(True))
    for tag in set(filters.tags):
        conditions.append(
            exists().where(ModelTagRow.model_id == ModelRow.id, ModelTagRow.tag == tag)
        )
    conditions += [_label_condition(r) for r in parse_label_selector(filters.label_selector)]
    return conditions


def _label_condition(requirement: Requirement) -> ColumnElement[bool]:
    match_key = [ModelLabelRow.model_id == ModelRow.id, ModelLabelRow.key == requirement.key]
    if requirement.op in (Op.EQUALS, Op.NOT_EQUALS):
        match_key.append(ModelLabelRow.value == requirement.value)
    found = exists().where(*match_key)
    return found if requirement.op in (Op.EQUALS, Op.EXISTS) else ~found


async def _not_found(session: AsyncSession, name: str, version: str) -> NotFound:
    """NOT_FOUND that says what does exist, so the caller can correct the request."""
    metadata = {"model": name, "version": version}
    versions = (
        await session.execute(
            select(ModelRow.version, ModelRow.stage)
            .where(ModelRow.name == name)
            .order_by(ModelRow.id.desc())
        )
    ).all()
    if versions and version:
        listed = _some([v for v, _ in versions])
        return NotFound(
            f"model {name}@{version} not found; versions of {name!r}, newest first: {listed}",
            reason="MODEL_VERSION_NOT_FOUND",
            metadata=metadata,
        )
    if versions:
        return NotFound(
            f"model {name!r} has no version to serve: every version is archived "
            f"({_some([v for v, _ in versions])}); ask for an exact version, or move one "
            "to staging or production (see `modelyard models list`)",
            reason="MODEL_VERSION_NOT_FOUND",
            metadata=metadata,
        )
    names = list(await session.scalars(select(ModelRow.name).distinct().order_by(ModelRow.name)))
    if not names:
        hint = "the registry has no models yet"
    elif close := difflib.get_close_matches(name, names, n=3):
        hint = f"did you mean {' or '.join(repr(n) for n in close)}?"
    else:
        hint = f"registered models: {_some(names)} (see `modelyard models list`)"
    return NotFound(
        f"model {name!r} not found; {hint}", reason="MODEL_NOT_FOUND", metadata=metadata
    )


def _some(items: Sequence[str]) -> str:
    shown = ", ".join(items[:HINT_LIMIT])
    more = len(items) - HINT_LIMIT
    return f"{shown} and {more} more" if more > 0 else shown
