from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from modelyard.v1 import common_pb2
from router.scheduling.framework import Profile, run_cycle
from router.scheduling.pickers.max_score import MaxScorePicker
from router.scheduling.profiles import build_profiles
from router.scheduling.types import Candidate, CycleState, Request
from tests.unit.router.scheduling.plugin_kit import WARM, cand, model, req


@dataclass(frozen=True)
class Fixed:
    """A scorer that returns preset scores (out of range on purpose, to test clamping)."""

    table: dict[str, float]
    name: str = "fixed"

    def score(
        self, r: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> dict[Candidate, float]:
        return {c: self.table[c.worker] for c in cands}


@dataclass(frozen=True)
class DropWorker:
    worker: str
    name: str = "drop"

    def filter(
        self, r: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> Sequence[Candidate]:
        return [c for c in cands if c.worker != self.worker]


def test_filters_then_weighted_clamped_scores_then_picker() -> None:
    a, b, c = cand("a"), cand("b"), cand("c")
    profile = Profile(
        "t",
        filters=[DropWorker("c")],
        scorers=[(Fixed({"a": 1.0, "b": 0.0, "c": 1.0}), 1.0), (Fixed({"a": 0, "b": 5}), 3.0)],
        picker=MaxScorePicker(),
    )
    decision = run_cycle(profile, req(), [a, b, c])
    # b: 3 * clamp(5) = 3 beats a: 1; c was filtered.
    assert decision.ordered == [b, a]


def test_everything_filtered_is_an_empty_decision_with_reasons() -> None:
    profile = build_profiles()[common_pb2.OBJECTIVE_BALANCED]
    decision = run_cycle(profile, req(chat=True), [cand(m=model(chat=False))])
    assert decision.ordered == []
    assert "no chat template" in decision.cycle.describe_rejections()


def test_cost_profile_picks_the_cheapest_model_under_the_ceiling() -> None:
    cheap, dear = model("cheap", price=0.001), model("dear", price=0.004)
    cands = [cand("w1", dear, residency=WARM), cand("w1", cheap), cand("w2", dear)]
    profile = build_profiles()[common_pb2.OBJECTIVE_COST]
    assert run_cycle(profile, req(), cands).ordered[0].model.name == "cheap"
    over = run_cycle(profile, req(max_cost_per_1k=0.0005), cands)
    assert over.ordered == [] and "cost_ceiling" in over.cycle.rejected


def test_latency_profile_picks_the_lowest_predicted_ttft() -> None:
    fast = cand("fast", ttft_ms=80.0, residency=WARM)
    slow = cand("slow", ttft_ms=400.0, residency=WARM)
    profile = build_profiles()[common_pb2.OBJECTIVE_LATENCY]
    assert run_cycle(profile, req(), [slow, fast]).ordered[0] is fast


def test_load_profile_avoids_the_busiest() -> None:
    workers = [
        cand("a", queued_tokens=0),
        cand("b", queued_tokens=100),
        cand("c", queued_tokens=9e6),
    ]
    profile = build_profiles()[common_pb2.OBJECTIVE_LOAD]
    firsts = {run_cycle(profile, req(), workers).ordered[0].worker for _ in range(30)}
    assert "c" not in firsts


def test_weights_and_pickers_come_from_configuration() -> None:
    profiles = build_profiles({"latency": {"queue": 1.0}}, {"latency": "round_robin"})
    latency = profiles[common_pb2.OBJECTIVE_LATENCY]
    assert [s.name for s, _ in latency.scorers] == ["queue"]
    assert latency.picker.name == "round_robin"
    with pytest.raises(ValueError, match="unknown scorer"):
        build_profiles({"cost": {"cheapness": 1.0}})
    with pytest.raises(ValueError, match="unknown objective"):
        build_profiles(pickers={"fastest": "max_score"})
