from router.scheduling.pickers.round_robin import RoundRobinPicker
from tests.unit.router.scheduling.plugin_kit import cand, cycle, req


def test_rotates_ignoring_scores() -> None:
    a, b, c = cand("a"), cand("b"), cand("c")
    picker = RoundRobinPicker()
    firsts = [picker.pick(req(), [(a, 1.0), (b, 0.0), (c, 0.0)], cycle())[0] for _ in range(3)]
    assert firsts == [a, b, c]
