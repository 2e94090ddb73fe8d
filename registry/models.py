"""Model versions in SQL: validation, lookups, filters and NOT_FOUND hints.

Functions take an open session; `registry.store` owns transactions and revisions.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, case, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.digest import is_sha256
from modelyard.engine_options import allowed_for, refused_keys, unreadable_values
from modelyard.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from modelyard.refs import check_name, check_version
from modelyard.v1 import model_pb2
from registry import convert
from registry.model_bounds import bound_violations
from registry.selectors import Op, Requirement, parse_label_selector
from registry.tables import ModelLabelRow, ModelRow, ModelTagRow, RouteRow

STAGES = frozenset(model_pb2.Stage.values())
# How many names or versions a NOT_FOUND message lists before "and N more".
HINT_LIMIT = 10


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

    def conditions(self) -> list[ColumnElement[bool]]:
        """SQL conditions; INVALID_ARGUMENT naming the filter that cannot be used."""
        conditions: list[ColumnElement[bool]] = []
        if self.name:
            check_name(self.name, "name")
            conditions.append(ModelRow.name == self.name)
        if self.stage not in STAGES:
            raise InvalidArgument.for_field("stage", f"unknown stage {self.stage}")
        if self.stage != model_pb2.STAGE_UNSPECIFIED:
            conditions.append(ModelRow.stage == self.stage)
        if self.require_chat:
            conditions.append(ModelRow.chat.is_(True))
        if self.require_completion:
            conditions.append(ModelRow.completion.is_(True))
        for tag in set(self.tags):
            conditions.append(
                exists().where(ModelTagRow.model_id == ModelRow.id, ModelTagRow.tag == tag)
            )
        conditions += [_label_condition(r) for r in parse_label_selector(self.label_selector)]
        return conditions


def validated(model: model_pb2.Model) -> model_pb2.Model:
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
    violations += bound_violations(model)
    violations += _artifact_and_option_violations(model)
    if model.load_options.draft_model:
        try:
            name, sep, version = model.load_options.draft_model.partition("@")
            check_name(name, "model.load_options.draft_model")
            if sep:
                check_version(version, "model.load_options.draft_model")
        except InvalidArgument as err:
            violations += err.violations
    if violations:
        raise InvalidArgument.for_violations(violations)
    clean = model_pb2.Model()
    clean.CopyFrom(model)
    clean.ClearField("created_at")
    clean.ClearField("updated_at")
    clean.artifact.sha256 = _sha256_of(model)
    if clean.stage == model_pb2.STAGE_UNSPECIFIED:
        clean.stage = model_pb2.STAGE_STAGING
    return clean


def _sha256_of(model: model_pb2.Model) -> str:
    return model.artifact.sha256.strip().lower()


def _artifact_and_option_violations(model: model_pb2.Model) -> list[FieldViolation]:
    """What workers need to trust a version: a digest to verify the weights against (it
    also names their caches on disk) and only engine options the engines accept."""
    violations: list[FieldViolation] = []
    if not is_sha256(_sha256_of(model)):
        violations.append(
            FieldViolation(
                "model.artifact.sha256",
                "required: the 64 hex digits of the artifact's sha256 (`sha256sum FILE`; for "
                "an hf:// directory, `find . -type f | sort | xargs sha256sum | sha256sum`), "
                "so workers verify the weights before loading them",
            )
        )
    refused = refused_keys(model.load_options.extra, model.engines)
    if refused:
        allowed = ", ".join(sorted(allowed_for(model.engines))) or "none"
        for key in refused:
            violations.append(
                FieldViolation(
                    f"model.load_options.extra.{key}",
                    f"{key!r} is not an option the model's engines accept; allowed: {allowed}",
                )
            )
    for key, why in unreadable_values(model.load_options.extra, model.engines):
        violations.append(
            FieldViolation(
                f"model.load_options.extra.{key}", f"{why}: no worker could load this version"
            )
        )
    return violations


def check_same_version(existing: ModelRow, model: model_pb2.Model) -> None:
    """Re-registration is fine only with identical content (and no stage change)."""
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


async def check_not_a_route(session: AsyncSession, name: str) -> None:
    if await session.scalar(select(RouteRow.name).where(RouteRow.name == name)) is not None:
        raise AlreadyExists(
            f"model.name: {name!r} is already a route's name; a request names a model or a "
            "route, so the two cannot share a name",
            reason="NAME_TAKEN_BY_ROUTE",
            metadata={"field": "model.name", "name": name},
            violations=[FieldViolation("model.name", "already the name of a route")],
        )


async def insert(session: AsyncSession, model: model_pb2.Model, now: datetime) -> model_pb2.Model:
    row = convert.new_row(model, now)
    session.add(row)
    await session.flush()  # assigns row.id for the tag and label rows
    session.add_all(convert.tag_rows(row.id, model))
    session.add_all(convert.label_rows(row.id, model))
    return convert.row_to_model(row)


async def find(session: AsyncSession, name: str, version: str) -> ModelRow | None:
    return await session.scalar(
        select(ModelRow).where(ModelRow.name == name, ModelRow.version == version)
    )


async def find_exact(session: AsyncSession, name: str, version: str) -> ModelRow:
    """The row of name@version (both validated), or NOT_FOUND with hints."""
    check_name(name, "name")
    check_version(version, "version")
    row = await find(session, name, version)
    if row is None:
        raise await not_found(session, name, version)
    return row


async def resolve(session: AsyncSession, name: str, version: str) -> ModelRow:
    """GetModel's rule: an exact version, or the newest production, else newest not archived."""
    check_name(name, "name")
    if version:
        return await find_exact(session, name, version)
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
        raise await not_found(session, name, version)
    return row


async def stages_by_name(
    session: AsyncSession, names: Iterable[str]
) -> dict[str, dict[str, model_pb2.Stage.ValueType]]:
    """name -> version -> stage for the given names (absent names are left out)."""
    wanted = sorted(set(names))
    found: dict[str, dict[str, model_pb2.Stage.ValueType]] = {}
    if not wanted:
        return found
    rows = await session.execute(
        select(ModelRow.name, ModelRow.version, ModelRow.stage).where(ModelRow.name.in_(wanted))
    )
    for name, version, stage in rows:
        found.setdefault(name, {})[version] = model_pb2.Stage.ValueType(stage)
    return found


async def has_other_routable_version(session: AsyncSession, name: str, version: str) -> bool:
    """Whether a bare `name` still resolves once name@version is gone or archived."""
    other = await session.scalar(
        select(ModelRow.id)
        .where(
            ModelRow.name == name,
            ModelRow.version != version,
            ModelRow.stage != model_pb2.STAGE_ARCHIVED,
        )
        .limit(1)
    )
    return other is not None


def _label_condition(requirement: Requirement) -> ColumnElement[bool]:
    match_key = [ModelLabelRow.model_id == ModelRow.id, ModelLabelRow.key == requirement.key]
    if requirement.op in (Op.EQUALS, Op.NOT_EQUALS):
        match_key.append(ModelLabelRow.value == requirement.value)
    found = exists().where(*match_key)
    return found if requirement.op in (Op.EQUALS, Op.EXISTS) else ~found


async def not_found(session: AsyncSession, name: str, version: str) -> NotFound:
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
