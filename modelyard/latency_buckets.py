"""Log-scale latency buckets (HDR-style, ~2% relative error), shared by the router's
in-memory stats and the registry's stored outcome windows: a histogram is a map
bucket index -> count, so histograms merge by adding counts, wherever they were kept."""

from __future__ import annotations

import math
from collections.abc import Mapping

# Bucket i holds values in [GROWTH**i, GROWTH**(i+1)) ms; 0.01 ms .. 1e7 ms is ~1400
# buckets at most, and a series only holds the buckets it has seen.
GROWTH = 1.02
_LOG_GROWTH = math.log(GROWTH)
MIN_MS = 0.01


def bucket_of(ms: float) -> int:
    return math.floor(math.log(max(ms, MIN_MS)) / _LOG_GROWTH)


def quantile(buckets: Mapping[int, int], q: float) -> float:
    """The value at quantile q (0..1), as the bucket's geometric midpoint; 0 if empty."""
    count = sum(buckets.values())
    if not count:
        return 0.0
    rank = max(1, math.ceil(q * count))
    seen = 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank:
            return float(GROWTH ** (index + 0.5))
    return 0.0  # unreachable: counts add up
