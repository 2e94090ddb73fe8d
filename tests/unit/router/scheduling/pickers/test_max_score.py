from router.scheduling.pickers.max_score import MaxScorePicker
from tests.unit.router.scheduling.plugin_kit import cand, cycle, req


def test_highest_score_first_then_the_rest_by_score() -> None:
    a, b, c = cand("a"), cand("b"), cand("c")
    order = MaxScorePicker().pick(req(), [(a, 0.2), (b, 0.9), (c, 0.5)], cycle())
    assert order == [b, c, a]


def test_ties_go_to_the_less_loaded_of_two() -> None:
    idle, busy = cand("a"), cand("b", queued_tokens=500)
    picker = MaxScorePicker()
    firsts = {picker.pick(req(), [(idle, 0.7), (busy, 0.7)], cycle())[0] for _ in range(4)}
    assert firsts == {idle}


def test_equal_ties_rotate() -> None:
    a, b = cand("a"), cand("b")
    picker = MaxScorePicker()
    firsts = [picker.pick(req(), [(a, 0.5), (b, 0.5)], cycle())[0].worker for _ in range(4)]
    assert sorted(firsts) == ["a", "a", "b", "b"]


def test_empty_is_empty() -> None:
    assert MaxScorePicker().pick(req(), [], cycle()) == []
