"""The bounded-sample stage: what it must always score, what it must never pick, and that
it really bounds the work."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelyard.prefix import chain_of_prompt
from router.scheduling.filters.healthy import HealthyFilter
from router.scheduling.framework import Profile, run_cycle
from router.scheduling.pickers.max_score import MaxScorePicker
from router.scheduling.profiles import build_profiles
from router.scheduling.sample import BoundedSample
from router.scheduling.scorers.affinity import AffinityScorer, rendezvous_ranked
from router.scheduling.scorers.prefix import PrefixScorer
from router.scheduling.scorers.queue import QueueScorer
from router.scheduling.types import Candidate, CycleState, Request, Scorer
from tests.unit.router.scheduling.plugin_kit import WARM, cand, req

K = 16
POOL = 1000


@dataclass
class Counting:
    """Wraps a scorer and records how many candidates each call saw."""

    inner: Scorer
    seen: list[int] = field(default_factory=list)
    name: str = "counting"

    def score(
        self, r: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> dict[Candidate, float]:
        self.seen.append(len(cands))
        return self.inner.score(r, cands, cycle)


def profile(*scorers: Scorer, seed: int = 1, **sample: int) -> Profile:
    return Profile(
        "t",
        filters=[HealthyFilter()],
        scorers=[(s, 1.0) for s in scorers],
        picker=MaxScorePicker(),
        sample=BoundedSample(rng=random.Random(seed), **{"size": K, **sample}),
    )


def pool(n: int = POOL) -> list[Candidate]:
    return [cand(f"w{i:04d}", residency=WARM, queued_tokens=100 + i % 50) for i in range(n)]


def test_a_scorer_sees_at_most_k_candidates_at_pool_1000() -> None:
    counting = Counting(QueueScorer())
    for seed in range(20):
        decision = run_cycle(profile(counting, seed=seed), req(), pool())
        assert decision.ordered
    assert counting.seen and max(counting.seen) <= K


def test_pool_of_k_or_fewer_scores_everyone_as_without_a_sample() -> None:
    cands = pool(K)
    counting = Counting(QueueScorer())
    sampled = run_cycle(profile(counting), req(), cands)
    plain = run_cycle(
        Profile("t", [HealthyFilter()], [(QueueScorer(), 1.0)], MaxScorePicker()), req(), cands
    )
    assert counting.seen == [K]
    assert sampled.ordered == plain.ordered


def test_default_profiles_sample_large_pools_and_zero_turns_it_off() -> None:
    assert all(p.sample is not None for p in build_profiles().values())
    assert all(p.sample is None for p in build_profiles(sample_size=0).values())


def test_the_prefix_holder_is_always_scored_and_wins() -> None:
    chain = chain_of_prompt("x" * 2000)
    r = req(prefix=chain, prompt_tokens=500)
    for seed in range(20):
        cands = pool()
        holder = random.Random(seed).choice(cands)
        cands[cands.index(holder)] = cand(
            holder.worker, residency=WARM, queued_tokens=100, prefix_held=frozenset(chain.hashes)
        )
        decision = run_cycle(profile(PrefixScorer(), QueueScorer(), seed=seed), r, cands)
        assert decision.ordered[0].worker == holder.worker


def test_the_session_target_is_always_scored_and_wins() -> None:
    cands = [cand(f"w{i:04d}", residency=WARM) for i in range(POOL)]
    for seed in range(10):
        session = f"user-{seed}"
        target = rendezvous_ranked(session, (c.worker for c in cands), 1)[0]
        counting = Counting(AffinityScorer())
        decision = run_cycle(profile(counting, seed=seed), req(session_key=session), cands)
        assert decision.ordered[0].worker == target
        assert max(counting.seen) <= K


def test_a_filtered_worker_is_never_picked_and_an_empty_sample_draws_more() -> None:
    # Only 3 of 1,000 report status: random batches of 16 almost never hit them.
    healthy = {7, 500, 993}
    cands = [
        cand(f"w{i:04d}", residency=WARM, healthy=i in healthy, queued_tokens=0)
        for i in range(POOL)
    ]
    for seed in range(10):
        decision = run_cycle(profile(QueueScorer(), seed=seed), req(), cands)
        assert {c.worker for c in decision.ordered} <= {f"w{i:04d}" for i in healthy}
        assert decision.ordered


def test_fails_open_only_when_the_whole_pool_is_unhealthy() -> None:
    cands = [cand(f"w{i:04d}", residency=WARM, healthy=False) for i in range(100)]
    decision = run_cycle(profile(QueueScorer()), req(), cands)
    assert decision.ordered  # nothing reports status: every candidate stays, as unsampled
