"""What the controller does with one step's window: a pure function.

A failing guard rolls back at once (as soon as it has enough data to fail). Going on
needs the step's whole duration, `min_requests` on each arm and every guard passing;
the step before the last (100%) going on is the promotion.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from modelyard.v1 import model_pb2
from registry.rollout.guards import ArmWindow, Verdict, check_all


@dataclass(frozen=True)
class StepDecision:
    action: model_pb2.RolloutAction.ValueType | None  # None: keep waiting
    reason: str


def decide(
    policy: model_pb2.RolloutPolicy,
    status: model_pb2.RolloutStatus,
    canary: ArmWindow,
    baseline: ArmWindow,
    now: datetime,
) -> StepDecision:
    checks = check_all(policy, canary, baseline)
    failed = [c.reason for c in checks if c.verdict is Verdict.FAIL]
    share = f"step {status.step} ({status.canary_percent:g}%)"
    if failed:
        return StepDecision(model_pb2.ROLLOUT_ACTION_ROLLBACK, f"{share}: {'; '.join(failed)}")
    counts = f"canary {canary.requests}, baseline {baseline.requests} requests"
    if min(canary.requests, baseline.requests) < policy.min_requests:
        return StepDecision(None, f"{share}: {counts}, {policy.min_requests} each needed")
    elapsed = (now - status.step_started_at.ToDatetime(now.tzinfo)).total_seconds()
    if elapsed < policy.min_step_seconds:
        return StepDecision(None, f"{share}: {elapsed:.0f} s of {policy.min_step_seconds} s")
    waiting = [c.reason for c in checks if c.verdict is Verdict.WAIT]
    if waiting:
        return StepDecision(None, f"{share}: {'; '.join(waiting)}")
    passed = "; ".join(c.reason for c in checks) or "no guards set"
    last = len(policy.steps_percent) - 1
    action = (
        model_pb2.ROLLOUT_ACTION_PROMOTE
        if status.step + 1 >= last
        else model_pb2.ROLLOUT_ACTION_ADVANCE
    )
    return StepDecision(action, f"{share} passed after {elapsed:.0f} s, {counts}: {passed}")
