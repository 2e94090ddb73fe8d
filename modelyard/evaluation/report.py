"""The run's figures per group and metric, as rich tables, JSON, and the EvaluationRun
the registry stores (`--record`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.markup import escape
from rich.table import Table

from modelyard.evaluation.dataset import Dataset
from modelyard.evaluation.metrics import Metric
from modelyard.evaluation.scoring import Group
from modelyard.evaluation.statistics import Interval, difference, mean_interval, quantile
from modelyard.v1 import outcomes_pb2


@dataclass(frozen=True)
class MetricFigures:
    count: int
    errors: int  # failed generations and answers the metric could not score
    interval: Interval | None  # None when the metric applies to none of the group's cases
    diff: Interval | None  # to the first group; None for the first group itself


@dataclass(frozen=True)
class GroupFigures:
    group: Group
    cost_usd: float
    latency_p50_ms: float
    latency_p95_ms: float
    metrics: dict[str, MetricFigures]

    @property
    def answered_by(self) -> str:
        g = self.group
        who = f"{g.model}@{g.version}" if g.model else "(no answer)"
        return f"{who} [{g.arm}]" if g.arm else who


def _latency(group: Group) -> tuple[float, float]:
    ordered = sorted(a.latency_ms for a in group.answers if not a.error)
    if not ordered:
        return 0.0, 0.0
    return quantile(ordered, 0.5), quantile(ordered, 0.95)


def _metric(group: Group, base: Group | None, metric: Metric, seed: int) -> MetricFigures:
    scored = group.scores.get(metric.name, [])
    values = [s.value for _, s in scored]
    interval = mean_interval(values, binary=metric.binary, seed=seed) if values else None
    diff = None
    base_scored = base.scores.get(metric.name, []) if base is not None else []
    if base is not None and values and base_scored:
        paired = [c for c, _ in scored] == [c for c, _ in base_scored]
        base_values = [s.value for _, s in base_scored]
        diff = difference(base_values, values, paired=paired, seed=seed)
    return MetricFigures(len(values), group.metric_errors(metric.name), interval, diff)


def figures(groups: Sequence[Group], metrics: Sequence[Metric], seed: int) -> list[GroupFigures]:
    """Each group's figures; differences are to the first group (the first target)."""
    out: list[GroupFigures] = []
    for i, group in enumerate(groups):
        base = groups[0] if i else None
        p50, p95 = _latency(group)
        out.append(
            GroupFigures(
                group=group,
                cost_usd=sum(a.cost_usd for a in group.answers),
                latency_p50_ms=p50,
                latency_p95_ms=p95,
                metrics={m.name: _metric(group, base, m, seed) for m in metrics},
            )
        )
    return out


def _ci(interval: Interval | None) -> str:
    return "-" if interval is None else f"[{interval.low:.3f}, {interval.high:.3f}]"


def _diff(interval: Interval | None) -> str:
    if interval is None:
        return "-"
    return f"{interval.mean:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]"


def tables(rows: Sequence[GroupFigures], metrics: Sequence[Metric]) -> list[Table]:
    """One table per metric."""
    out: list[Table] = []
    for m in metrics:
        kind = "0/1, Wilson 95% CI" if m.binary else "bootstrap 95% CI"
        table = Table(title=f"{m.name} ({kind}; Δ vs the first row)")
        table.add_column("target")
        table.add_column(escape("model@version [arm]"))
        for name in ("n", "mean", "95% CI", "Δ [95% CI]", "errors", "cost $", "p50/p95 ms"):
            table.add_column(name, justify="right")
        for row in rows:
            f = row.metrics[m.name]
            table.add_row(
                escape(row.group.target.spec),
                escape(row.answered_by),
                str(f.count),
                "-" if f.interval is None else f"{f.interval.mean:.3f}",
                _ci(f.interval),
                _diff(f.diff),
                str(f.errors),
                f"{row.cost_usd:.6f}",
                f"{row.latency_p50_ms:.0f}/{row.latency_p95_ms:.0f}",
            )
        out.append(table)
    return out


def _interval_json(interval: Interval | None) -> dict[str, float] | None:
    if interval is None:
        return None
    return {"mean": interval.mean, "ci_low": interval.low, "ci_high": interval.high}


def to_json(run_id: str, dataset: Dataset, rows: Sequence[GroupFigures]) -> dict[str, Any]:
    """The run for machines: one entry per group, every metric with its interval."""
    return {
        "run_id": run_id,
        "dataset": dataset.name,
        "dataset_sha256": dataset.sha256,
        "prompts": len(dataset.cases),
        "targets": [
            {
                "target": r.group.target.spec,
                "model": r.group.model,
                "version": r.group.version,
                "route": r.group.target.route,
                "arm": r.group.arm,
                "answers": len(r.group.answers),
                "errors": r.group.errors,
                "cost_usd": r.cost_usd,
                "latency_p50_ms": r.latency_p50_ms,
                "latency_p95_ms": r.latency_p95_ms,
                "metrics": {
                    name: {
                        "count": f.count,
                        "errors": f.errors,
                        **(_interval_json(f.interval) or {}),
                        "diff_to_first": _interval_json(f.diff),
                    }
                    for name, f in r.metrics.items()
                },
            }
            for r in rows
        ],
    }


def to_run(
    run_id: str, dataset: Dataset, rows: Sequence[GroupFigures]
) -> outcomes_pb2.EvaluationRun:
    """The run as the registry stores it (metrics a group has no case for are left out)."""
    run = outcomes_pb2.EvaluationRun(
        id=run_id,
        dataset=dataset.name,
        dataset_sha256=dataset.sha256,
        prompts=len(dataset.cases),
    )
    run.created_at.FromDatetime(datetime.now(UTC))
    for r in rows:
        g = r.group
        target = run.targets.add(
            target=g.target.route or g.target.spec,
            model=g.model,
            version=g.version,
            arm=g.arm,
            errors=g.errors,
            cost_usd=r.cost_usd,
            latency_p50_ms=r.latency_p50_ms,
            latency_p95_ms=r.latency_p95_ms,
        )
        for name, f in r.metrics.items():
            if f.interval is not None:
                target.metrics.add(
                    metric=name,
                    count=f.count,
                    mean=f.interval.mean,
                    ci_low=f.interval.low,
                    ci_high=f.interval.high,
                )
    return run
