"""Counters of loads and refusals that Prometheus reads (worker.metrics); plain data."""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field

# Seconds: a cached tiny GGUF loads in ~0.1 s, a vLLM engine starts in ~25-60 s, a
# multi-GB download can take minutes.
LOAD_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass
class DurationHistogram:
    buckets: tuple[float, ...] = LOAD_BUCKETS_S
    counts: list[int] = field(default_factory=list)  # per bucket, then +Inf; not cumulative
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """(upper bound, observations <= it) pairs ending with +Inf, as Prometheus wants."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass
class LoadStats:
    """Per worker: loads by result, their durations, evictions, refused requests."""

    loads: collections.Counter[str] = field(default_factory=collections.Counter)  # result
    durations: DurationHistogram = field(default_factory=DurationHistogram)
    evictions: int = 0
    # (model key, reason) -> requests refused before reaching a queue.
    rejected: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
