"""A rollout's EvaluationGate: the newest recorded offline evaluation of both the canary's
and the baseline's model versions, its metric means compared with `min_delta`.

No such run (or only runs older than `max_age_seconds`, or without the metric): keep
waiting, saying why. A run that fails the gate rolls the rollout back before any traffic.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.errors import NotFound
from modelyard.v1 import model_pb2, outcomes_pb2
from registry import models
from registry.evaluations import runs_with
from registry.rollout.decide import StepDecision
from registry.rollout.status import arm_models


async def resolve_ref(session: AsyncSession, ref: str) -> tuple[str, str] | None:
    """(name, version) an arm's model ref stands for now, or None when none does."""
    name, _, version = ref.partition("@")
    try:
        row = await models.resolve(session, name, version)
    except NotFound:
        return None
    return row.name, row.version


async def check_gate(session: AsyncSession, route: model_pb2.Route, now: datetime) -> StepDecision:
    gate = route.rollout.evaluation_gate
    canary_ref, baseline_ref = arm_models(route)
    canary = await resolve_ref(session, canary_ref)
    baseline = await resolve_ref(session, baseline_ref)
    if canary is None or baseline is None:
        return StepDecision(None, "an arm's model version is not in the catalogue")
    wanted = [f"{canary[0]}@{canary[1]}", f"{baseline[0]}@{baseline[1]}"]
    runs = await runs_with(session, wanted, 1)
    if not runs:
        return StepDecision(None, f"waiting for an evaluation run of both {' and '.join(wanted)}")
    run = runs[0]
    age = (now - run.created_at.ToDatetime(now.tzinfo)).total_seconds()
    if gate.max_age_seconds and age > gate.max_age_seconds:
        return StepDecision(
            None,
            f"the newest evaluation run {run.id!r} is {age:.0f} s old, "
            f"more than {gate.max_age_seconds} s",
        )
    c, b = _mean(run, canary, gate.metric), _mean(run, baseline, gate.metric)
    if c is None or b is None:
        return StepDecision(None, f"evaluation run {run.id!r} has no {gate.metric} for both arms")
    delta = c - b
    figures = f"evaluation run {run.id!r}: {gate.metric} {c:.4g} - {b:.4g} = {delta:.4g}"
    if delta >= gate.min_delta:
        return StepDecision(model_pb2.ROLLOUT_ACTION_START, f"{figures} >= {gate.min_delta:g}")
    return StepDecision(model_pb2.ROLLOUT_ACTION_ROLLBACK, f"{figures} < {gate.min_delta:g}")


def _mean(run: outcomes_pb2.EvaluationRun, key: tuple[str, str], metric: str) -> float | None:
    for target in run.targets:
        if (target.model, target.version) == key:
            for summary in target.metrics:
                if summary.metric == metric:
                    return summary.mean
    return None
