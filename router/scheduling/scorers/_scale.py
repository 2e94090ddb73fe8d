"""Shared normalisation: lower raw values score higher, in [0, 1]."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

K = TypeVar("K")


def lower_is_better(raw: Mapping[K, float]) -> dict[K, float]:
    """min/value: the best gets 1, one twice as costly 0.5; all-zero ties get 1."""
    if not raw:
        return {}
    best = min(raw.values())
    # Once, not per key (that was quadratic in the pool).
    worst = max(raw.values()) if best <= 0 else 0.0
    out: dict[K, float] = {}
    for key, value in raw.items():
        if value <= 0:
            out[key] = 1.0
        elif best <= 0:
            # The best is free: rate the rest against the worst instead.
            out[key] = 1.0 - value / worst if worst > 0 else 1.0
        else:
            out[key] = best / value
    return out
