"""RolloutPolicy rules, each reported on the field that breaks it (INVALID_ARGUMENT).

- exactly two arms on the route, `canary_arm` and `baseline_arm` naming both, distinct;
- `steps_percent`: 2 to 20 steps, increasing, each in (0, 100], the last 100
  (reaching the last step is the promotion: it has no baseline left to compare to);
- `min_step_seconds` 1..86400, `min_requests` 1..1,000,000;
- guards: `max_error_rate_increase` in [0, 1], the ratios finite and > 0 (at most 1000),
  `min_feedback_delta` finite (|x| <= 1e6); `alpha` 0 (0.05) or in (0, 0.5);
- `evaluation_gate`: empty, or a metric name of 1-64 [A-Za-z0-9_.:-] and a finite min_delta.
"""

from __future__ import annotations

import math
import re

from modelyard.errors import FieldViolation
from modelyard.v1 import model_pb2

MAX_STEPS = 20
MAX_STEP_SECONDS = 86_400
MAX_MIN_REQUESTS = 1_000_000
MAX_RATIO = 1000.0
MAX_SCORE_DELTA = 1e6
METRIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
WHERE = "route.rollout"


def check_rollout(route: model_pb2.Route, violations: list[FieldViolation]) -> None:
    """Append the policy's violations; arm names must already be normalized."""
    if not route.HasField("rollout"):
        return
    policy = route.rollout
    _check_arms(route, violations)
    _check_steps(policy, violations)
    if not 1 <= policy.min_step_seconds <= MAX_STEP_SECONDS:
        violations.append(
            FieldViolation(
                f"{WHERE}.min_step_seconds",
                f"must be 1..{MAX_STEP_SECONDS}, got {policy.min_step_seconds}",
            )
        )
    if not 1 <= policy.min_requests <= MAX_MIN_REQUESTS:
        violations.append(
            FieldViolation(
                f"{WHERE}.min_requests",
                f"must be 1..{MAX_MIN_REQUESTS}, got {policy.min_requests}",
            )
        )
    _check_guards(policy, violations)
    _check_gate(policy.evaluation_gate, violations)


def _check_arms(route: model_pb2.Route, violations: list[FieldViolation]) -> None:
    names = [arm.name for arm in route.arms]
    policy = route.rollout
    if len(names) != 2:
        violations.append(
            FieldViolation(
                "route.arms", f"a route with a rollout has exactly two arms, got {len(names)}"
            )
        )
    for field in ("canary_arm", "baseline_arm"):
        value = getattr(policy, field)
        if value not in names:
            violations.append(
                FieldViolation(
                    f"{WHERE}.{field}",
                    f"must name one of the route's arms ({', '.join(names) or 'none'}), "
                    f"got {value!r}",
                )
            )
    if policy.canary_arm and policy.canary_arm == policy.baseline_arm:
        violations.append(
            FieldViolation(f"{WHERE}.baseline_arm", "must be another arm than canary_arm")
        )


def _check_steps(policy: model_pb2.RolloutPolicy, violations: list[FieldViolation]) -> None:
    steps = list(policy.steps_percent)
    where = f"{WHERE}.steps_percent"
    if not 2 <= len(steps) <= MAX_STEPS:
        violations.append(
            FieldViolation(where, f"2 to {MAX_STEPS} steps, e.g. 1,5,25,50,100; got {len(steps)}")
        )
        return
    for i, value in enumerate(steps):
        if not (math.isfinite(value) and 0 < value <= 100):
            violations.append(FieldViolation(f"{where}[{i}]", f"must be in (0, 100], got {value}"))
        elif i and not value > steps[i - 1]:
            violations.append(
                FieldViolation(
                    f"{where}[{i}]", f"steps must increase: {value} after {steps[i - 1]}"
                )
            )
    if steps[-1] != 100:
        violations.append(
            FieldViolation(
                f"{where}[{len(steps) - 1}]", f"the last step must be 100, got {steps[-1]}"
            )
        )


def _check_guards(policy: model_pb2.RolloutPolicy, violations: list[FieldViolation]) -> None:
    def bad(field: str, rule: str) -> None:
        violations.append(
            FieldViolation(f"{WHERE}.{field}", f"must be {rule}, got {getattr(policy, field)}")
        )

    if policy.HasField("max_error_rate_increase") and not (
        0 <= policy.max_error_rate_increase <= 1
    ):
        bad("max_error_rate_increase", "in [0, 1] (an absolute difference of rates)")
    for field in ("max_ttft_p95_ratio", "max_cost_ratio"):
        value = getattr(policy, field)
        if policy.HasField(field) and not (math.isfinite(value) and 0 < value <= MAX_RATIO):
            bad(field, f"a ratio > 0 and at most {MAX_RATIO:g}")
    if policy.HasField("min_feedback_delta") and not (
        math.isfinite(policy.min_feedback_delta)
        and abs(policy.min_feedback_delta) <= MAX_SCORE_DELTA
    ):
        bad("min_feedback_delta", f"a number within +-{MAX_SCORE_DELTA:g}")
    if not (policy.alpha == 0 or 0 < policy.alpha < 0.5):
        bad("alpha", "0 (meaning 0.05) or in (0, 0.5)")


def _check_gate(gate: model_pb2.EvaluationGate, violations: list[FieldViolation]) -> None:
    where = f"{WHERE}.evaluation_gate"
    if not gate.metric:
        if gate.min_delta or gate.max_age_seconds:
            violations.append(
                FieldViolation(
                    f"{where}.metric", "required when min_delta or max_age_seconds is set"
                )
            )
        return
    if not METRIC_NAME.fullmatch(gate.metric):
        violations.append(
            FieldViolation(
                f"{where}.metric", "1 to 64 characters of [A-Za-z0-9_.:-], e.g. exact_match"
            )
        )
    if not (math.isfinite(gate.min_delta) and abs(gate.min_delta) <= MAX_SCORE_DELTA):
        violations.append(
            FieldViolation(f"{where}.min_delta", f"must be a number within +-{MAX_SCORE_DELTA:g}")
        )
