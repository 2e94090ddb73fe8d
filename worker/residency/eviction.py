"""How to make room for a new model in the memory budget: a pure function.

Cached prefixes go first: each model's prefix-cache reserve (`reclaimable`, any
model's, busy or not: no request needs a cached prefix to finish), least recently
used models' first. Then idle models are evicted, least recently used first, only
those nobody holds (no request queued or running, not pinned, warm). The answer is
a plan to carry out, or the reason it cannot fit (`refusal` turns that into the
error a client sees).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelyard.errors import ResourceExhausted


@dataclass(frozen=True)
class Holder:
    """A model in memory, as the planner sees it."""

    key: str
    bytes: int
    last_used: float
    evictable: bool
    reclaimable: int = 0  # of `bytes`: what shrinking its prefix cache would free


@dataclass(frozen=True)
class Evict:
    """It fits once these prefix caches have shrunk by these bytes and these models are
    evicted (none of either: it fits as is)."""

    victims: tuple[str, ...]
    shrink: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class TooLarge:
    """It needs more than the whole budget: it can never be loaded here."""


@dataclass(frozen=True)
class Busy:
    """Evicting every idle model would still leave too little; `busy` cannot be evicted."""

    available_bytes: int  # free after evicting every idle model
    busy: tuple[str, ...]


Plan = Evict | TooLarge | Busy


def plan_eviction(need: int, budget: int, holders: Sequence[Holder]) -> Plan:
    """How to make room for `need` bytes beside `holders` within `budget`."""
    if need > budget:
        return TooLarge()
    used = sum(h.bytes for h in holders)
    by_age = sorted(holders, key=lambda h: h.last_used)
    shrink: list[tuple[str, int]] = []
    left: dict[str, int] = {}  # bytes a model still holds once its cache has shrunk
    for holder in by_age:
        take = min(holder.reclaimable, max(used + need - budget, 0))
        if take > 0:
            shrink.append((holder.key, take))
            used -= take
        left[holder.key] = holder.bytes - take
    victims: list[str] = []
    for holder in (h for h in by_age if h.evictable):
        if used + need <= budget:
            break
        victims.append(holder.key)
        used -= left[holder.key]
    if used + need > budget:
        return Busy(budget - used, tuple(h.key for h in holders if not h.evictable))
    # An evicted model's cache goes with it: shrinking it first would be wasted work.
    return Evict(tuple(victims), tuple((k, b) for k, b in shrink if k not in victims))


def refusal(
    plan: TooLarge | Busy, key: str, need: int, budget: int, available: int
) -> ResourceExhausted:
    """The RESOURCE_EXHAUSTED a refused plan answers with: bytes needed, available, budget."""
    if isinstance(plan, TooLarge):
        message = (
            f"{key} needs ~{need >> 20} MiB but the worker's whole memory budget is "
            f"{budget >> 20} MiB: it can never be loaded here"
        )
        reason, retry_after_s = "MODEL_TOO_LARGE", None
    else:
        message = (
            f"{key} needs ~{need >> 20} MiB; {plan.available_bytes >> 20} MiB would be free "
            f"after evicting every idle model, and {', '.join(plan.busy)} cannot be evicted "
            "(requests in flight, loading or pinned)"
        )
        reason, retry_after_s = "MEMORY_BUDGET_BUSY", 1.0
    return ResourceExhausted(
        message,
        reason=reason,
        metadata={
            "model": key,
            "needed_bytes": str(need),
            "available_bytes": str(max(available, 0)),
            "budget_bytes": str(budget),
        },
        retry_after_s=retry_after_s,
    )
