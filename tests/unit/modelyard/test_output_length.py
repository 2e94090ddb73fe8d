"""The expected output of requests without max_tokens, and how ceilings combine."""

from __future__ import annotations

import pytest

from modelyard.output_length import (
    DEFAULT_EXPECTED_OUTPUT,
    MAX_MODELS,
    OutputEstimate,
    lowest_ceiling,
)


def test_the_lowest_set_ceiling_wins_and_unset_ones_are_ignored() -> None:
    assert lowest_ceiling() == 0
    assert lowest_ceiling(0, 0) == 0
    assert lowest_ceiling(0, 512, 0) == 512
    assert lowest_ceiling(4096, 40, 512) == 40


def test_a_model_starts_at_the_seed_and_moves_toward_what_it_produces() -> None:
    est = OutputEstimate(seed=100, weight=0.5)
    assert est.expected("a@1") == 100
    est.observe("a@1", 20)
    assert est.expected("a@1") == 60  # halfway: 100 + 0.5 * (20 - 100)
    est.observe("a@1", 20)
    assert est.expected("a@1") == 40
    assert est.expected("b@1") == 100  # per model


def test_the_default_seed_and_a_long_run_converge_on_the_mean() -> None:
    est = OutputEstimate()
    assert est.expected("m@1") == DEFAULT_EXPECTED_OUTPUT
    for _ in range(200):
        est.observe("m@1", 30)
    assert est.expected("m@1") == 30


def test_the_estimate_is_capped_and_never_below_one_token() -> None:
    est = OutputEstimate(seed=300)
    assert est.expected("m@1", cap=40) == 40  # a ceiling, or the room the context leaves
    assert est.expected("m@1", cap=0) == 300  # 0: no cap
    for _ in range(100):
        est.observe("m@1", 0)
    assert est.expected("m@1") == 1


def test_memory_stays_bounded_forgetting_the_least_recently_fed_model() -> None:
    est = OutputEstimate(seed=10, weight=1.0)
    est.observe("first@1", 5)
    for i in range(MAX_MODELS):
        est.observe(f"m{i}@1", 7)
    assert est.expected("first@1") == 10  # forgotten: back at the seed
    assert est.expected(f"m{MAX_MODELS - 1}@1") == 7


@pytest.mark.parametrize(("seed", "weight"), [(0, 0.1), (10, 0.0), (10, 1.5)])
def test_bad_settings_are_refused(seed: int, weight: float) -> None:
    with pytest.raises(ValueError):
        OutputEstimate(seed=seed, weight=weight)
