import random

from router.scheduling.pickers.power_of_two import PowerOfTwoPicker
from tests.unit.router.scheduling.plugin_kit import cand, cycle, req


def test_never_picks_the_worst_of_three_and_returns_everyone() -> None:
    best, mid, worst = cand("a"), cand("b"), cand("c")
    picker = PowerOfTwoPicker(rng=random.Random(1))
    scored = [(best, 0.9), (mid, 0.5), (worst, 0.1)]
    for _ in range(50):
        order = picker.pick(req(), scored, cycle())
        assert order[0] is not worst and sorted(c.worker for c in order) == ["a", "b", "c"]


def test_single_candidate() -> None:
    only = cand()
    assert PowerOfTwoPicker().pick(req(), [(only, 0.0)], cycle()) == [only]
