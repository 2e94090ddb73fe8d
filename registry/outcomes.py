"""OutcomeStore: request outcomes and feedback from every router, and stats over them.

Outcomes share the catalogue's database but are not catalogue changes: no revision bump,
no change row, nothing for Watch. Raw rows are kept `raw_retention_s`, then folded (by
`registry.outcome_fold`) into fixed windows that keep sums and latency histograms; a
query adds the raw rows and the windows of its time range.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from modelyard.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from modelyard.latency_buckets import bucket_of
from modelyard.v1 import outcomes_pb2
from registry.database import WRITE_FIRST
from registry.outcome_stats import SeriesFilter, query_stats
from registry.tables import OutcomeRow

log = logging.getLogger(__name__)

MAX_BATCH = 500
MAX_COMMENT_BYTES = 2048
MAX_SCORE = 1e6
MAX_ID_CHARS = 128
MAX_WORKER_ID_CHARS = 256


@dataclass(frozen=True)
class Retention:
    raw_s: float = 24 * 3600.0  # raw outcomes (and feedback on them) this long
    window_s: int = 60  # then folded into windows this wide
    windows_s: float = 30 * 24 * 3600.0  # windows kept this long


class OutcomeStore:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.retention = retention or Retention()
        self.clock = clock
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def record(self, outcomes: Sequence[outcomes_pb2.Outcome]) -> int:
        """Store the outcomes not stored yet; returns how many were new."""
        if len(outcomes) > MAX_BATCH:
            raise InvalidArgument.for_field("outcomes", f"at most {MAX_BATCH} per call")
        rows: dict[str, dict[str, object]] = {}
        for i, outcome in enumerate(outcomes):
            _check(outcome, f"outcomes[{i}]")
            rows.setdefault(outcome.request_id, self._row(outcome))
        if not rows:
            return 0
        async with self.sessions() as session:
            await session.connection(execution_options=WRITE_FIRST)  # reads, then writes
            known = set(
                (
                    await session.scalars(
                        select(OutcomeRow.request_id).where(OutcomeRow.request_id.in_(rows))
                    )
                ).all()
            )
            new = [row for rid, row in rows.items() if rid not in known]
            if new:
                # A concurrent retry of the same batch may win the race: skip, never count twice.
                await session.execute(
                    dialect_insert(self.engine.dialect.name)(OutcomeRow)
                    .values(new)
                    .on_conflict_do_nothing()
                )
            await session.commit()
        return len(new)

    async def attach_feedback(
        self, request_id: str, score: float, comment: str, client: str = ""
    ) -> None:
        """Score a request once. With `client` (the API key name the feedback came
        through) only a request that key made, or one made without a key, is found:
        another key's request looks unknown."""
        _check_feedback(request_id, score, comment)
        mine = [OutcomeRow.request_id == request_id]
        if client:
            mine.append(OutcomeRow.client.in_(("", client)))
        async with self.sessions() as session:
            result = await session.execute(
                update(OutcomeRow)
                .where(*mine, OutcomeRow.status_code == 0, OutcomeRow.feedback_score.is_(None))
                .values(feedback_score=score, feedback_comment=comment)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
            if getattr(result, "rowcount", 0) == 1:
                return
            status = await session.scalar(select(OutcomeRow.status_code).where(*mine))
        if status == 0:
            raise AlreadyExists(
                f"request {request_id} was already scored: a request takes one score",
                reason="FEEDBACK_EXISTS",
            )
        raise NotFound(
            f"request {request_id} is unknown, did not finish, or is older than the "
            "raw-outcome retention (MODELYARD_REGISTRY_OUTCOME_RETENTION_S)",
            reason="REQUEST_NOT_FOUND",
        )

    async def feedback_comment(self, request_id: str) -> str | None:
        async with self.sessions() as session:
            return await session.scalar(
                select(OutcomeRow.feedback_comment).where(OutcomeRow.request_id == request_id)
            )

    async def query(
        self, model: str = "", route: str = "", window_seconds: int = 0
    ) -> outcomes_pb2.QueryOutcomeStatsResponse:
        since_ms = self.now_ms() - window_seconds * 1000 if window_seconds else None
        window_ms = self.retention.window_s * 1000
        async with self.sessions() as session:
            models, arms = await query_stats(
                session,
                SeriesFilter.of(model, route),
                since_ms=since_ms,
                # Whole windows that overlap the range: the windows' granularity.
                window_since_ms=None if since_ms is None else since_ms // window_ms * window_ms,
            )
        return outcomes_pb2.QueryOutcomeStatsResponse(models=models, arms=arms)

    def _row(self, outcome: outcomes_pb2.Outcome) -> dict[str, object]:
        finished_ms = (
            outcome.finished_at.ToMilliseconds()
            if outcome.HasField("finished_at")
            else self.now_ms()
        )
        counted = not outcome.cached  # a cache hit costs nothing and times no worker
        ok = outcome.status_code == 0
        return {
            "request_id": outcome.request_id,
            "router_id": outcome.router_id,
            "finished_at_ms": finished_ms,
            "model": outcome.model,
            "version": outcome.version,
            "route": outcome.route,
            "arm": outcome.arm,
            "attempt": outcome.attempt,
            "worker_id": outcome.worker_id,
            "client": outcome.client,
            "status_code": outcome.status_code,
            "input_tokens": outcome.input_tokens,
            "output_tokens": outcome.output_tokens,
            "cached_input_tokens": outcome.cached_input_tokens,
            "cost_usd": outcome.cost_usd if counted else 0.0,
            "ttft_ms": outcome.ttft_ms,
            "total_ms": outcome.total_ms,
            "ttft_bucket": bucket_of(outcome.ttft_ms) if counted and outcome.ttft_ms > 0 else None,
            "total_bucket": (
                bucket_of(outcome.total_ms) if counted and ok and outcome.total_ms > 0 else None
            ),
            "cached": outcome.cached,
            "feedback_score": None,
            "feedback_comment": None,
        }


def dialect_insert(dialect: str) -> Any:
    """INSERT with the dialect's ON CONFLICT clauses (SQLite and PostgreSQL have both)."""
    return sqlite_insert if dialect == "sqlite" else pg_insert


def _check(outcome: outcomes_pb2.Outcome, where: str) -> None:
    bad: list[FieldViolation] = []
    if not outcome.request_id:
        bad.append(FieldViolation(f"{where}.request_id", "required"))
    for name in ("request_id", "router_id", "model", "version", "route", "arm", "client"):
        if len(getattr(outcome, name)) > MAX_ID_CHARS:
            bad.append(FieldViolation(f"{where}.{name}", f"at most {MAX_ID_CHARS} characters"))
    if len(outcome.worker_id) > MAX_WORKER_ID_CHARS:
        bad.append(
            FieldViolation(f"{where}.worker_id", f"at most {MAX_WORKER_ID_CHARS} characters")
        )
    for name in ("cost_usd", "ttft_ms", "total_ms"):
        value = getattr(outcome, name)
        if not (math.isfinite(value) and value >= 0):
            bad.append(FieldViolation(f"{where}.{name}", "must be a finite number >= 0"))
    if bad:
        raise InvalidArgument.for_violations(bad)


def _check_feedback(request_id: str, score: float, comment: str) -> None:
    bad: list[FieldViolation] = []
    if not request_id:
        bad.append(FieldViolation("request_id", "required"))
    elif len(request_id) > MAX_ID_CHARS:
        bad.append(FieldViolation("request_id", f"at most {MAX_ID_CHARS} characters"))
    if not (math.isfinite(score) and abs(score) <= MAX_SCORE):
        bad.append(FieldViolation("score", f"must be a finite number within ±{MAX_SCORE:g}"))
    if len(comment.encode()) > MAX_COMMENT_BYTES:
        bad.append(FieldViolation("comment", f"at most {MAX_COMMENT_BYTES} bytes of UTF-8"))
    if bad:
        raise InvalidArgument.for_violations(bad)


__all__ = ["MAX_BATCH", "OutcomeStore", "Retention"]
