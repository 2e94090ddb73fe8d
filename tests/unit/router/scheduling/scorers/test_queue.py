from router.scheduling.scorers.queue import QueueScorer
from tests.unit.router.scheduling.plugin_kit import cand, cycle, req


def test_fewer_queued_tokens_score_higher_within_0_and_1() -> None:
    idle, busy, own = cand("a"), cand("b", queued_tokens=4096), cand("c", in_flight=4)
    scores = QueueScorer().score(req(), [idle, busy, own], cycle())
    assert scores[idle] == 1.0
    assert 0 < scores[busy] < scores[idle] and 0 < scores[own] < scores[idle]
