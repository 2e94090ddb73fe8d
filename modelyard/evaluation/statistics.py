"""Means with two-sided 95% confidence intervals: Wilson's score interval for 0/1 scores
(honest at small n and at 0% or 100%, where the normal interval collapses), a seeded
bootstrap percentile interval otherwise, and the bootstrap for differences between two
targets (paired by case when both scored the same cases)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval of a proportion; ValueError for n < 1 or a count outside
    0..n."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes}/{n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At the edges the bound is exactly 0 or 1 (the formula only comes close by rounding).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high)


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default method)."""
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _percentile_interval(mean: float, stats: list[float]) -> Interval:
    stats.sort()
    return Interval(mean, quantile(stats, 0.025), quantile(stats, 0.975))


def bootstrap(values: Sequence[float], *, seed: int = 0, resamples: int = RESAMPLES) -> Interval:
    """Mean and bootstrap percentile interval; the same seed gives the same interval."""
    if not values:
        raise ValueError("no values")
    rng = random.Random(seed)
    n = len(values)
    stats = [_mean(rng.choices(values, k=n)) for _ in range(resamples)]
    return _percentile_interval(_mean(values), stats)


def mean_interval(values: Sequence[float], *, binary: bool, seed: int = 0) -> Interval:
    """Wilson for 0/1 scores, the bootstrap otherwise."""
    if binary:
        return wilson(round(math.fsum(values)), len(values))
    return bootstrap(values, seed=seed)


def difference(
    base: Sequence[float],
    other: Sequence[float],
    *,
    paired: bool,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Interval:
    """mean(other) - mean(base) with a bootstrap percentile interval. Paired (the same
    cases, in the same order) resamples the per-case differences, which removes the
    cases' own spread; unpaired resamples each side on its own."""
    if not base or not other:
        raise ValueError("no values")
    if paired:
        if len(base) != len(other):
            raise ValueError("paired samples differ in length")
        diffs = [o - b for b, o in zip(base, other, strict=True)]
        return bootstrap(diffs, seed=seed, resamples=resamples)
    rng = random.Random(seed)
    stats = [
        _mean(rng.choices(other, k=len(other))) - _mean(rng.choices(base, k=len(base)))
        for _ in range(resamples)
    ]
    return _percentile_interval(_mean(other) - _mean(base), stats)
