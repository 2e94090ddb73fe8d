"""The rollout guards and the step decision, as table tests of pure functions: the
error-rate z-test (fails only on a significant excess; too few samples waits, never
passes), the TTFT, cost and feedback guards, and when a step advances or promotes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelyard.v1 import model_pb2
from registry.rollout.decide import decide
from registry.rollout.guards import (
    MIN_SAMPLES,
    ArmWindow,
    Verdict,
    check_cost,
    check_error_rate,
    check_feedback,
    check_ttft,
    error_rate_z,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def arm(requests: int, errors: int = 0, **fields: float) -> ArmWindow:
    return ArmWindow(requests=requests, errors=errors, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("canary", "baseline", "margin", "verdict"),
    [
        # Too few samples: wait, even when the canary looks terrible or perfect.
        (arm(5, 5), arm(100), 0.0, Verdict.WAIT),
        (arm(MIN_SAMPLES - 1), arm(1000), 0.0, Verdict.WAIT),
        (arm(1000), arm(MIN_SAMPLES - 1), 0.0, Verdict.WAIT),
        # Same rates: no evidence of an excess.
        (arm(200, 2), arm(200, 2), 0.0, Verdict.PASS),
        (arm(50), arm(50), 0.0, Verdict.PASS),
        # A clear excess over the margin fails.
        (arm(100, 30), arm(100, 1), 0.05, Verdict.FAIL),
        (arm(40, 40), arm(40, 0), 0.5, Verdict.FAIL),
        # An excess within the margin passes.
        (arm(1000, 30), arm(1000, 20), 0.05, Verdict.PASS),
        # A small excess on small samples is not significant: pass (not a failure).
        (arm(20, 2), arm(20, 0), 0.0, Verdict.PASS),
    ],
)
def test_error_rate_guard(
    canary: ArmWindow, baseline: ArmWindow, margin: float, verdict: Verdict
) -> None:
    check = check_error_rate(canary, baseline, margin, 0.05)
    assert check.verdict is verdict, check.reason


def test_z_grows_with_the_excess_and_with_the_sample() -> None:
    small = error_rate_z(arm(50, 10), arm(50, 2), 0.0)
    large = error_rate_z(arm(500, 100), arm(500, 20), 0.0)
    assert 0 < small < large
    assert error_rate_z(arm(100, 1), arm(100, 10), 0.0) < 0  # a better canary


@pytest.mark.parametrize(
    ("canary_ms", "baseline_ms", "ratio", "verdict"),
    [
        (300.0, 200.0, 1.5, Verdict.PASS),
        (301.0, 200.0, 1.5, Verdict.FAIL),
        (50, 200, 1.0, Verdict.PASS),
    ],
)
def test_ttft_guard(canary_ms: float, baseline_ms: float, ratio: float, verdict: Verdict) -> None:
    check = check_ttft(arm(50, ttft_p95_ms=canary_ms), arm(50, ttft_p95_ms=baseline_ms), ratio)
    assert check.verdict is verdict, check.reason
    assert f"{canary_ms:.0f} ms" in check.reason  # the reason quotes the figures
    assert check_ttft(arm(5, ttft_p95_ms=1e6), arm(50), ratio).verdict is Verdict.WAIT


def test_cost_guard() -> None:
    assert check_cost(arm(30, cost_usd=3.0), arm(30, cost_usd=2.0), 1.5).verdict is Verdict.PASS
    assert check_cost(arm(30, cost_usd=3.1), arm(30, cost_usd=2.0), 1.5).verdict is Verdict.FAIL
    assert check_cost(arm(30), arm(30), 1.0).verdict is Verdict.PASS  # both free
    assert check_cost(arm(30, cost_usd=0.1), arm(30), 2.0).verdict is Verdict.FAIL


def test_feedback_guard_waits_for_scores() -> None:
    few = check_feedback(arm(100, feedback_sum=9, feedback_count=9), arm(100), 0.0)
    assert few.verdict is Verdict.WAIT
    better = arm(100, feedback_sum=8, feedback_count=10)
    worse = arm(100, feedback_sum=5, feedback_count=10)
    assert check_feedback(better, worse, 0.1).verdict is Verdict.PASS
    assert check_feedback(worse, better, -0.1).verdict is Verdict.FAIL


def policy(**fields: object) -> model_pb2.RolloutPolicy:
    values: dict[str, object] = {
        "canary_arm": "new",
        "baseline_arm": "old",
        "steps_percent": [10, 50, 100],
        "min_step_seconds": 60,
        "min_requests": 30,
        "max_error_rate_increase": 0.0,
    }
    values.update(fields)
    return model_pb2.RolloutPolicy(**values)  # type: ignore[arg-type]


def status(step: int, age_s: float) -> model_pb2.RolloutStatus:
    s = model_pb2.RolloutStatus(
        state=model_pb2.ROLLOUT_STATE_PROGRESSING, step=step, canary_percent=[10, 50][step]
    )
    s.step_started_at.FromDatetime(NOW - timedelta(seconds=age_s))
    return s


@pytest.mark.parametrize(
    ("step", "age_s", "canary", "baseline", "action"),
    [
        (0, 120, arm(100), arm(100), model_pb2.ROLLOUT_ACTION_ADVANCE),
        (1, 120, arm(100), arm(100), model_pb2.ROLLOUT_ACTION_PROMOTE),
        (0, 30, arm(100), arm(100), None),  # the step's duration is not over
        (0, 120, arm(25), arm(100), None),  # min_requests not reached on the canary
        (0, 5, arm(100, 60), arm(100), model_pb2.ROLLOUT_ACTION_ROLLBACK),  # fails at once
    ],
)
def test_step_decision(
    step: int,
    age_s: float,
    canary: ArmWindow,
    baseline: ArmWindow,
    action: model_pb2.RolloutAction.ValueType | None,
) -> None:
    decision = decide(policy(), status(step, age_s), canary, baseline, NOW)
    assert decision.action == action, decision.reason
    assert decision.reason.startswith(f"step {step}")


def test_no_guard_still_needs_the_requests_and_the_duration() -> None:
    bare = policy(min_requests=1)
    bare.ClearField("max_error_rate_increase")
    assert decide(bare, status(0, 120), arm(1), arm(1), NOW).action == (
        model_pb2.ROLLOUT_ACTION_ADVANCE
    )
    assert decide(bare, status(0, 120), arm(0), arm(1), NOW).action is None
