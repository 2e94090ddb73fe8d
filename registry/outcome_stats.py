"""Per-model and per-arm statistics over stored outcomes: raw rows plus folded windows.

Every query is a GROUP BY whose result is bounded by the number of series (model
version x route x arm) times the latency buckets they use, never by the request count;
the rows read are capped, and a cap that bites is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.latency_buckets import quantile
from modelyard.refs import model_key
from modelyard.v1 import router_pb2
from registry.tables import WINDOW_SUMS, OutcomeRow, OutcomeWindowLatencyRow, OutcomeWindowRow

log = logging.getLogger(__name__)

MAX_SERIES_ROWS = 20_000
MAX_BUCKET_ROWS = 200_000

Series = tuple[str, str, str, str]  # (model, version, route, arm)


@dataclass(frozen=True)
class SeriesFilter:
    name: str = ""
    version: str = ""
    route: str = ""

    @classmethod
    def of(cls, model: str, route: str) -> SeriesFilter:
        name, _, version = model.partition("@")
        return cls(name, version, route)


@dataclass
class _Traffic:
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(WINDOW_SUMS, 0.0))
    ttft: dict[int, int] = field(default_factory=dict)
    total: dict[int, int] = field(default_factory=dict)

    def merge(self, other: _Traffic) -> None:
        for key, value in other.sums.items():
            self.sums[key] += value
        for mine, theirs in ((self.ttft, other.ttft), (self.total, other.total)):
            for bucket, count in theirs.items():
                mine[bucket] = mine.get(bucket, 0) + count

    def to_proto(self) -> router_pb2.TrafficStats:
        s = self.sums
        feedback = int(s["feedback_count"])
        return router_pb2.TrafficStats(
            requests=int(s["requests"]),
            errors=int(s["errors"]),
            input_tokens=int(s["input_tokens"]),
            output_tokens=int(s["output_tokens"]),
            cost_usd=s["cost_usd"],
            ttft=_summary(self.ttft),
            total_latency=_summary(self.total),
            mean_feedback_score=s["feedback_sum"] / feedback if feedback else 0.0,
            feedback_count=feedback,
            cached_requests=int(s["cached_requests"]),
            cached_input_tokens=int(s["cached_input_tokens"]),
        )


def _summary(buckets: dict[int, int]) -> router_pb2.LatencySummary:
    return router_pb2.LatencySummary(
        p50_ms=quantile(buckets, 0.5),
        p95_ms=quantile(buckets, 0.95),
        p99_ms=quantile(buckets, 0.99),
    )


async def query_stats(
    session: AsyncSession,
    wanted: SeriesFilter,
    *,
    since_ms: int | None,
    window_since_ms: int | None,
) -> tuple[list[router_pb2.ModelStats], list[router_pb2.ArmStats]]:
    series: dict[Series, _Traffic] = {}
    for statement in (_raw_sums(wanted, since_ms), _window_sums(wanted, window_since_ms)):
        for row in await _rows(session, statement, MAX_SERIES_ROWS):
            key: Series = (row[0], row[1], row[2], row[3])
            traffic = series.setdefault(key, _Traffic())
            for name, value in zip(WINDOW_SUMS, row[4:], strict=True):
                traffic.sums[name] += float(value or 0)
    for statement in _bucket_queries(wanted, since_ms, window_since_ms):
        for model, version, route, arm, kind, bucket, count in await _rows(
            session, statement, MAX_BUCKET_ROWS
        ):
            traffic = series.setdefault((model, version, route, arm), _Traffic())
            histogram = traffic.ttft if kind == "ttft" else traffic.total
            histogram[bucket] = histogram.get(bucket, 0) + int(count)
    return _roll_up(series, wanted)


def _roll_up(
    series: dict[Series, _Traffic], wanted: SeriesFilter
) -> tuple[list[router_pb2.ModelStats], list[router_pb2.ArmStats]]:
    models: dict[tuple[str, str], _Traffic] = {}
    arms: dict[tuple[str, str, str], _Traffic] = {}
    for (model, version, route, arm), traffic in series.items():
        models.setdefault((model, version), _Traffic()).merge(traffic)
        if route and (not wanted.route or route == wanted.route):
            label = model_key(model, version) if version else model
            arms.setdefault((route, arm, label), _Traffic()).merge(traffic)
    return (
        [
            router_pb2.ModelStats(model=m, version=v, traffic=t.to_proto())
            for (m, v), t in sorted(models.items())
        ],
        [
            router_pb2.ArmStats(route=r, arm=a, model=label, traffic=t.to_proto())
            for (r, a, label), t in sorted(arms.items())
        ],
    )


async def _rows(session: AsyncSession, statement: Select[Any], cap: int) -> list[Any]:
    rows = list((await session.execute(statement.limit(cap))).all())
    if len(rows) >= cap:
        log.warning("outcome stats: a query reached its cap of %d rows; figures are partial", cap)
    return rows


def _where(table: Any, wanted: SeriesFilter, time_column: Any, since: int | None) -> list[Any]:
    # The route filter narrows arms only (as in the router's own stats), so it is applied
    # when rolling up, not here.
    conditions = []
    if wanted.name:
        conditions.append(table.model == wanted.name)
    if wanted.version:
        conditions.append(table.version == wanted.version)
    if since is not None:
        conditions.append(time_column >= since)
    return conditions


def _series(table: Any) -> list[Any]:
    return [table.model, table.version, table.route, table.arm]


def _raw_sums(wanted: SeriesFilter, since: int | None) -> Select[Any]:
    o = OutcomeRow
    return (
        select(
            *_series(o),
            func.count(),
            func.sum(case((o.status_code != 0, 1), else_=0)),
            func.sum(o.input_tokens),
            func.sum(o.output_tokens),
            func.sum(o.cached_input_tokens),
            func.sum(case((o.cached, 1), else_=0)),
            func.sum(o.cost_usd),
            func.sum(o.feedback_score),
            func.count(o.feedback_score),
        )
        .where(*_where(o, wanted, o.finished_at_ms, since))
        .group_by(*_series(o))
    )


def _window_sums(wanted: SeriesFilter, since: int | None) -> Select[Any]:
    w = OutcomeWindowRow
    return (
        select(*_series(w), *(func.sum(getattr(w, name)) for name in WINDOW_SUMS))
        .where(*_where(w, wanted, w.window_start_ms, since))
        .group_by(*_series(w))
    )


def _bucket_queries(
    wanted: SeriesFilter, since: int | None, window_since: int | None
) -> Iterable[Select[Any]]:
    o = OutcomeRow
    for kind, column in (("ttft", o.ttft_bucket), ("total", o.total_bucket)):
        yield (
            select(*_series(o), literal(kind), column, func.count())
            .where(column.is_not(None), *_where(o, wanted, o.finished_at_ms, since))
            .group_by(*_series(o), column)
        )
    w = OutcomeWindowLatencyRow
    yield (
        select(*_series(w), w.kind, w.bucket, func.sum(w.count))
        .where(*_where(w, wanted, w.window_start_ms, window_since))
        .group_by(*_series(w), w.kind, w.bucket)
    )
