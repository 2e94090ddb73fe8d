"""The guards of a rollout step, canary against baseline: pure functions of the window.

Each guard answers PASS, FAIL (roll back) or WAIT (not enough data to judge either way).
Too few samples is always WAIT, never PASS: a guard is judged only once each arm has
`MIN_SAMPLES` requests (`MIN_SCORED` scored ones for feedback) in the step's window.

The error-rate guard is a one-sided two-proportion z-test of H0 "canary rate - baseline
rate <= margin" at level alpha: it fails when the excess is significant. The proportions
are Agresti-Caffo adjusted (one error and one success added per arm), so a window with no
errors still has a standard error and small samples are not over-trusted.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

from modelyard.v1 import model_pb2

MIN_SAMPLES = 20  # requests per arm before any guard is judged
MIN_SCORED = 10  # feedback scores per arm before the feedback guard is judged
DEFAULT_ALPHA = 0.05


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"


@dataclass(frozen=True)
class ArmWindow:
    """One arm's non-cached outcomes since the step started."""

    requests: int = 0
    errors: int = 0
    cost_usd: float = 0.0
    ttft_p95_ms: float = 0.0
    feedback_sum: float = 0.0
    feedback_count: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_cost(self) -> float:
        return self.cost_usd / self.requests if self.requests else 0.0

    @property
    def mean_feedback(self) -> float:
        return self.feedback_sum / self.feedback_count if self.feedback_count else 0.0


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    reason: str


def error_rate_z(canary: ArmWindow, baseline: ArmWindow, margin: float) -> float:
    """z of the canary's excess error rate over baseline + margin (adjusted proportions)."""
    pc = (canary.errors + 1) / (canary.requests + 2)
    pb = (baseline.errors + 1) / (baseline.requests + 2)
    se = math.sqrt(pc * (1 - pc) / (canary.requests + 2) + pb * (1 - pb) / (baseline.requests + 2))
    return (pc - pb - margin) / se


def check_error_rate(canary: ArmWindow, baseline: ArmWindow, margin: float, alpha: float) -> Check:
    if min(canary.requests, baseline.requests) < MIN_SAMPLES:
        return Check(Verdict.WAIT, _too_few(canary.requests, baseline.requests, MIN_SAMPLES))
    z = error_rate_z(canary, baseline, margin)
    critical = NormalDist().inv_cdf(1 - alpha)
    figures = (
        f"error rate {canary.error_rate:.1%} ({canary.errors}/{canary.requests}) vs "
        f"{baseline.error_rate:.1%} ({baseline.errors}/{baseline.requests}), "
        f"margin {margin:g}, z {z:.2f}"
    )
    if z > critical:
        return Check(Verdict.FAIL, f"{figures} > {critical:.2f} (alpha {alpha:g})")
    return Check(Verdict.PASS, f"{figures} <= {critical:.2f}")


def check_ttft(canary: ArmWindow, baseline: ArmWindow, max_ratio: float) -> Check:
    ms = canary.ttft_p95_ms, baseline.ttft_p95_ms
    return _ratio(canary, baseline, max_ratio, "ttft p95", ms, lambda v: f"{v:.0f} ms")


def check_cost(canary: ArmWindow, baseline: ArmWindow, max_ratio: float) -> Check:
    usd = canary.mean_cost, baseline.mean_cost
    return _ratio(canary, baseline, max_ratio, "cost/request", usd, lambda v: f"${v:.6f}")


def _ratio(
    canary: ArmWindow,
    baseline: ArmWindow,
    max_ratio: float,
    label: str,
    figures: tuple[float, float],
    show: Callable[[float], str],
) -> Check:
    """The canary's figure against max_ratio times the baseline's, once both have data."""
    if min(canary.requests, baseline.requests) < MIN_SAMPLES:
        return Check(Verdict.WAIT, _too_few(canary.requests, baseline.requests, MIN_SAMPLES))
    ours, theirs = figures
    said = f"{label} {show(ours)}"
    bound = f"{max_ratio:g} x {show(theirs)}"
    if ours > max_ratio * theirs:
        return Check(Verdict.FAIL, f"{said} > {bound}")
    return Check(Verdict.PASS, f"{said} <= {bound}")


def check_feedback(canary: ArmWindow, baseline: ArmWindow, min_delta: float) -> Check:
    if min(canary.feedback_count, baseline.feedback_count) < MIN_SCORED:
        return Check(
            Verdict.WAIT,
            f"waiting for feedback: {canary.feedback_count} canary and "
            f"{baseline.feedback_count} baseline scores, {MIN_SCORED} each needed",
        )
    delta = canary.mean_feedback - baseline.mean_feedback
    figures = f"feedback {canary.mean_feedback:.3g} - {baseline.mean_feedback:.3g} = {delta:.3g}"
    if delta < min_delta:
        return Check(Verdict.FAIL, f"{figures} < {min_delta:g}")
    return Check(Verdict.PASS, f"{figures} >= {min_delta:g}")


def check_all(
    policy: model_pb2.RolloutPolicy, canary: ArmWindow, baseline: ArmWindow
) -> list[Check]:
    """Every guard the policy sets, in a fixed order."""
    alpha = policy.alpha or DEFAULT_ALPHA
    checks: list[Check] = []
    if policy.HasField("max_error_rate_increase"):
        checks.append(check_error_rate(canary, baseline, policy.max_error_rate_increase, alpha))
    if policy.HasField("max_ttft_p95_ratio"):
        checks.append(check_ttft(canary, baseline, policy.max_ttft_p95_ratio))
    if policy.HasField("max_cost_ratio"):
        checks.append(check_cost(canary, baseline, policy.max_cost_ratio))
    if policy.HasField("min_feedback_delta"):
        checks.append(check_feedback(canary, baseline, policy.min_feedback_delta))
    return checks


def _too_few(canary: int, baseline: int, needed: int) -> str:
    return f"too few requests to judge: canary {canary}, baseline {baseline}, {needed} each needed"
