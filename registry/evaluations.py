"""Offline evaluation runs (OutcomeService.RecordEvaluation / ListEvaluations), and the
lookup a rollout's EvaluationGate needs.

Runs are not catalogue changes (no revision, no Watch). A run is stored whole, with one
row per evaluated model version for the lookups; recording the same id again is a no-op
with the same content and ALREADY_EXISTS with other content.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from modelyard.errors import AlreadyExists, FieldViolation, InvalidArgument
from modelyard.refs import NAME_PATTERN, VERSION_PATTERN, parse_ref
from modelyard.v1 import outcomes_pb2
from registry.database import WRITE_FIRST
from registry.tables import EvaluationRunRow, EvaluationTargetRow

MAX_ID_CHARS = 128
MAX_TARGETS = 16
MAX_METRICS = 32
MAX_TEXT_CHARS = 256
MAX_NAME_CHARS = 128
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
METRIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
SHA256 = re.compile(r"[0-9a-f]{64}")


def check_run(run: outcomes_pb2.EvaluationRun) -> None:
    """INVALID_ARGUMENT listing every field out of bounds."""
    bad: list[FieldViolation] = []
    if not 1 <= len(run.id) <= MAX_ID_CHARS or not run.id.isprintable():
        bad.append(FieldViolation("run.id", f"1 to {MAX_ID_CHARS} printable characters"))
    if len(run.dataset) > MAX_TEXT_CHARS or "\x00" in run.dataset:
        bad.append(FieldViolation("run.dataset", f"at most {MAX_TEXT_CHARS} characters"))
    if run.dataset_sha256 and not SHA256.fullmatch(run.dataset_sha256):
        bad.append(FieldViolation("run.dataset_sha256", "64 lowercase hex digits, or empty"))
    if not 1 <= len(run.targets) <= MAX_TARGETS:
        bad.append(FieldViolation("run.targets", f"1 to {MAX_TARGETS} targets"))
    for i, target in enumerate(run.targets[:MAX_TARGETS]):
        _check_target(target, f"run.targets[{i}]", bad)
    if bad:
        raise InvalidArgument.for_violations(bad)


def _check_target(
    target: outcomes_pb2.EvaluationTarget, where: str, bad: list[FieldViolation]
) -> None:
    if len(target.target) > MAX_TEXT_CHARS:
        bad.append(FieldViolation(f"{where}.target", f"at most {MAX_TEXT_CHARS} characters"))
    if len(target.arm) > MAX_NAME_CHARS or "\x00" in target.target + target.arm:
        bad.append(FieldViolation(f"{where}.arm", f"at most {MAX_NAME_CHARS} characters"))
    if not NAME_PATTERN.match(target.model):
        bad.append(FieldViolation(f"{where}.model", "the model name that answered (required)"))
    if target.version and not VERSION_PATTERN.match(target.version):
        bad.append(FieldViolation(f"{where}.version", "not a valid version"))
    if len(target.metrics) > MAX_METRICS:
        bad.append(FieldViolation(f"{where}.metrics", f"at most {MAX_METRICS} metrics"))
    numbers = (target.cost_usd, target.latency_p50_ms, target.latency_p95_ms)
    if not all(math.isfinite(x) and x >= 0 for x in numbers):
        bad.append(FieldViolation(where, "cost and latencies must be finite numbers >= 0"))
    for j, metric in enumerate(target.metrics[:MAX_METRICS]):
        if not METRIC_NAME.fullmatch(metric.metric):
            bad.append(
                FieldViolation(
                    f"{where}.metrics[{j}].metric", "1 to 64 characters of [A-Za-z0-9_.:-]"
                )
            )
        if not all(math.isfinite(x) for x in (metric.mean, metric.ci_low, metric.ci_high)):
            bad.append(FieldViolation(f"{where}.metrics[{j}]", "mean and CI must be finite"))


class EvaluationStore:
    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], float] = time.time) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._clock = clock

    async def record(self, run: outcomes_pb2.EvaluationRun) -> bool:
        """Store the run; False when the same run was stored before."""
        check_run(run)
        stored = outcomes_pb2.EvaluationRun()
        stored.CopyFrom(run)
        if not stored.HasField("created_at"):
            stored.created_at.FromMilliseconds(int(self._clock() * 1000))
        async with self._sessions() as session:
            await session.connection(execution_options=WRITE_FIRST)  # reads, then writes
            existing = await session.get(EvaluationRunRow, run.id)
            if existing is not None:
                _check_same(existing, run)
                return False
            session.add(
                EvaluationRunRow(
                    id=run.id,
                    created_at_ms=stored.created_at.ToMilliseconds(),
                    spec=stored.SerializeToString(deterministic=True),
                )
            )
            await session.flush()
            session.add_all(
                EvaluationTargetRow(run_id=run.id, position=i, model=t.model, version=t.version)
                for i, t in enumerate(run.targets)
            )
            await session.commit()
        return True

    async def list(self, model: str = "", limit: int = 0) -> list[outcomes_pb2.EvaluationRun]:
        if limit > MAX_LIMIT:
            raise InvalidArgument.for_field("limit", f"1 to {MAX_LIMIT}, or 0 for {DEFAULT_LIMIT}")
        if model:
            parse_ref(model, "model")
        async with self._sessions() as session:
            return await runs_with(session, [model] if model else [], limit or DEFAULT_LIMIT)


async def runs_with(
    session: AsyncSession, models: list[str], limit: int
) -> list[outcomes_pb2.EvaluationRun]:
    """The newest runs that evaluated every one of `models` ("name" or "name@version")."""
    query = select(EvaluationRunRow.spec)
    for ref in models:
        name, _, version = ref.partition("@")
        match = select(EvaluationTargetRow.run_id).where(EvaluationTargetRow.model == name)
        if version:
            match = match.where(EvaluationTargetRow.version == version)
        query = query.where(EvaluationRunRow.id.in_(match))
    rows = await session.scalars(
        query.order_by(EvaluationRunRow.created_at_ms.desc(), EvaluationRunRow.id).limit(limit)
    )
    return [outcomes_pb2.EvaluationRun.FromString(spec) for spec in rows]


def _check_same(existing: EvaluationRunRow, run: outcomes_pb2.EvaluationRun) -> None:
    before = outcomes_pb2.EvaluationRun.FromString(existing.spec)
    if not run.HasField("created_at"):
        before.ClearField("created_at")  # the registry stamped it the first time
    if before.SerializeToString(deterministic=True) != run.SerializeToString(deterministic=True):
        raise AlreadyExists(
            f"evaluation run {run.id!r} was recorded with other content; give this run another id",
            reason="EVALUATION_RUN_EXISTS",
            metadata={"id": run.id},
        )
