"""Objective profiles: which filters, scorers (with weights) and picker each objective
uses. Weights and pickers come from configuration; this module only names plugins."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeAlias

from modelyard.v1 import common_pb2
from router.scheduling.filters.breaker import BreakerFilter
from router.scheduling.filters.capability import CapabilityFilter
from router.scheduling.filters.cost_ceiling import CostCeilingFilter
from router.scheduling.filters.healthy import HealthyFilter
from router.scheduling.filters.latency_ceiling import LatencyCeilingFilter
from router.scheduling.filters.residency import ResidencyFilter
from router.scheduling.framework import Profile
from router.scheduling.pickers.max_score import MaxScorePicker
from router.scheduling.pickers.power_of_two import PowerOfTwoPicker
from router.scheduling.pickers.round_robin import RoundRobinPicker
from router.scheduling.sample import DEFAULT_SIZE, BoundedSample
from router.scheduling.scorers.affinity import AffinityScorer
from router.scheduling.scorers.cost import CostScorer
from router.scheduling.scorers.latency import LatencyScorer
from router.scheduling.scorers.prefix import PrefixScorer
from router.scheduling.scorers.queue import QueueScorer
from router.scheduling.scorers.swap import SwapScorer
from router.scheduling.types import Filter, Picker, Scorer

Objective: TypeAlias = common_pb2.Objective.ValueType

SCORERS: Mapping[str, Callable[[], Scorer]] = MappingProxyType(
    {
        "queue": QueueScorer,
        "latency": LatencyScorer,
        "cost": CostScorer,
        "swap": SwapScorer,
        "affinity": AffinityScorer,
        "prefix": PrefixScorer,
    }
)
PICKERS: Mapping[str, Callable[[], Picker]] = MappingProxyType(
    {
        "max_score": MaxScorePicker,
        "power_of_two": PowerOfTwoPicker,
        "round_robin": RoundRobinPicker,
    }
)


def default_filters() -> list[Filter]:
    # Cheap, certain filters first; the latency ceiling needs predictions.
    return [
        HealthyFilter(),
        BreakerFilter(),
        CapabilityFilter(),
        ResidencyFilter(),
        CostCeilingFilter(),
        LatencyCeilingFilter(),
    ]


OBJECTIVES: Mapping[str, Objective] = MappingProxyType(
    {
        "balanced": common_pb2.OBJECTIVE_BALANCED,
        "cost": common_pb2.OBJECTIVE_COST,
        "latency": common_pb2.OBJECTIVE_LATENCY,
        "load": common_pb2.OBJECTIVE_LOAD,
    }
)

# Small secondary weights break ties sensibly (a warm copy of the cheapest model
# beats a cold one) without overriding the objective's main signal. `prefix` is
# guarded by load itself (0 once the holder's extra queue costs more than the prefill
# it saves) and also lowers the holder's predicted TTFT: with equal load the holder
# wins, and past that point `queue` and `latency` send the request elsewhere.
DEFAULT_WEIGHTS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "balanced": {
            "latency": 0.35,
            "queue": 0.25,
            "prefix": 0.2,
            "cost": 0.15,
            "swap": 0.15,
            "affinity": 0.1,
        },
        "cost": {"cost": 1.0, "swap": 0.05, "queue": 0.02},
        "latency": {"latency": 1.0, "prefix": 0.1, "swap": 0.05, "affinity": 0.02},
        "load": {"queue": 1.0},
    }
)
DEFAULT_PICKERS: Mapping[str, str] = MappingProxyType(
    {"balanced": "max_score", "cost": "max_score", "latency": "max_score", "load": "power_of_two"}
)


def build_profiles(
    weights: Mapping[str, Mapping[str, float]] | None = None,
    pickers: Mapping[str, str] | None = None,
    sample_size: int = DEFAULT_SIZE,
) -> dict[Objective, Profile]:
    """One profile per objective; `weights` and `pickers` (by objective name) replace the
    defaults. Unknown names are a ValueError, so a typo fails at start. Pools larger
    than `sample_size` candidates are scored on a bounded sample (sample.py); 0 scores
    every candidate."""
    if sample_size < 0:
        raise ValueError(f"sample_size must be 0 (off) or more, not {sample_size}")
    weights = weights or {}
    pickers = pickers or {}
    for key in (*weights, *pickers):
        if key not in OBJECTIVES:
            raise ValueError(f"unknown objective {key!r}; one of {', '.join(OBJECTIVES)}")
    profiles: dict[Objective, Profile] = {}
    for name, objective in OBJECTIVES.items():
        table = weights.get(name, DEFAULT_WEIGHTS[name])
        unknown = set(table) - set(SCORERS)
        if unknown:
            raise ValueError(f"unknown scorer(s) {sorted(unknown)}; one of {', '.join(SCORERS)}")
        picker = pickers.get(name, DEFAULT_PICKERS[name])
        if picker not in PICKERS:
            raise ValueError(f"unknown picker {picker!r}; one of {', '.join(PICKERS)}")
        profiles[objective] = Profile(
            name=name,
            filters=default_filters(),
            scorers=[(SCORERS[s](), w) for s, w in table.items()],
            picker=PICKERS[picker](),
            sample=BoundedSample(sample_size) if sample_size else None,
        )
    return profiles
