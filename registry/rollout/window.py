"""A rollout step's window: each arm's non-cached outcomes since the step started.

Read from the raw outcomes (a step is recent; rows older than the raw retention are
folded and no longer carry the route's per-request detail the guards need). Two
GROUP BY queries, bounded by the arms and the latency buckets, never by the requests.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.latency_buckets import quantile
from registry.rollout.guards import ArmWindow
from registry.tables import OutcomeRow


async def read_window(
    session: AsyncSession, route: str, arms: tuple[str, str], since_ms: int
) -> tuple[ArmWindow, ArmWindow]:
    """(first arm's window, second arm's) for `arms` of `route` since `since_ms`."""
    o = OutcomeRow
    where = (o.route == route, o.arm.in_(arms), o.finished_at_ms >= since_ms, o.cached.is_(False))
    sums = {
        row[0]: row[1:]
        for row in await session.execute(
            select(
                o.arm,
                func.count(),
                func.sum(case((o.status_code != 0, 1), else_=0)),
                func.sum(o.cost_usd),
                func.sum(o.feedback_score),
                func.count(o.feedback_score),
            )
            .where(*where)
            .group_by(o.arm)
        )
    }
    buckets: dict[str, dict[int, int]] = {arm: {} for arm in arms}
    for arm, bucket, count in await session.execute(
        select(o.arm, o.ttft_bucket, func.count())
        .where(*where, o.ttft_bucket.is_not(None), o.status_code == 0)
        .group_by(o.arm, o.ttft_bucket)
    ):
        if bucket is not None:
            buckets[arm][int(bucket)] = int(count)
    first, second = (_window(sums.get(arm), buckets[arm]) for arm in arms)
    return first, second


def _window(sums: Any, ttft: dict[int, int]) -> ArmWindow:
    if sums is None:
        return ArmWindow()
    requests, errors, cost, feedback_sum, feedback_count = sums
    return ArmWindow(
        requests=int(requests),
        errors=int(errors or 0),
        cost_usd=float(cost or 0.0),
        ttft_p95_ms=quantile(ttft, 0.95),
        feedback_sum=float(feedback_sum or 0.0),
        feedback_count=int(feedback_count or 0),
    )
