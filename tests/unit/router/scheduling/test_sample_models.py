"""A sampled cycle over a request many models can take ("pick for me"): every model gets
a look, so the cheapest is found however many workers each model has."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelyard.v1 import common_pb2
from router.scheduling.filters.healthy import HealthyFilter
from router.scheduling.framework import Profile, run_cycle
from router.scheduling.pickers.max_score import MaxScorePicker
from router.scheduling.profiles import build_profiles
from router.scheduling.sample import BoundedSample
from router.scheduling.scorers.queue import QueueScorer
from router.scheduling.sequence_pool import SequencePool
from router.scheduling.types import Candidate, CycleState, Request, Scorer
from tests.unit.router.scheduling.plugin_kit import WARM, cand, model, req

MODELS = 50
WORKERS = 40


def pool(cheap: int) -> list[Candidate]:
    """Every worker lists every model; model `cheap` costs a tenth of the others; a few
    warm copies of the expensive ones, none of the cheap one."""
    models = [model(f"m{i}", price=0.0001 if i == cheap else 0.001) for i in range(MODELS)]
    return [
        cand(f"w{w:03d}", models[m], residency=WARM if (w + m) % 9 == 0 and m != cheap else 0)
        for w in range(WORKERS)
        for m in range(MODELS)
    ]


@dataclass
class ModelsSeen:
    """Wraps a scorer and records the models each call saw."""

    inner: Scorer
    seen: list[set[str]] = field(default_factory=list)
    name: str = "models_seen"

    def score(
        self, r: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> dict[Candidate, float]:
        self.seen.append({c.model_key for c in cands})
        return self.inner.score(r, cands, cycle)


def test_every_model_is_scored_once_the_pool_is_sampled() -> None:
    watch = ModelsSeen(QueueScorer())
    sample = BoundedSample(rng=random.Random(3))
    profile = Profile("t", [HealthyFilter()], [(watch, 1.0)], MaxScorePicker(), sample)
    for seed in range(5):
        run_cycle(profile, req(session_key=f"s{seed}"), pool(cheap=seed * 7))
        assert len(watch.seen[-1]) == MODELS
    # Bounded all the same: one batch of the sample plus one per model, not 2,000.
    assert max(len(s) for s in watch.seen) <= MODELS


def test_the_cost_objective_finds_the_cheapest_of_fifty_models() -> None:
    profile = build_profiles()[common_pb2.OBJECTIVE_COST]
    for seed in range(10):
        profile.sample.rng.seed(seed)  # type: ignore[union-attr]
        cheap = (seed * 13) % MODELS
        decision = run_cycle(profile, req(), pool(cheap))
        assert decision.ordered[0].model.name == f"m{cheap}"


def test_shuffled_draws_one_of_each_model_before_any_second() -> None:
    cands = pool(cheap=0)
    first = list(SequencePool(cands).shuffled(random.Random(1)))[:MODELS]
    assert len({c.model_key for c in first}) == MODELS
