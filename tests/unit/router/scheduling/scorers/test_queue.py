from router.scheduling.scorers.queue import QueueScorer
from tests.unit.router.scheduling.plugin_kit import cand, cycle, req


def test_fewer_queued_tokens_score_higher_within_0_and_1() -> None:
    idle, busy, own = cand("a"), cand("b", queued_tokens=4096), cand("c", in_flight=4)
    scores = QueueScorer().score(req(), [idle, busy, own], cycle())
    assert scores[idle] == 1.0
    assert 0 < scores[busy] < scores[idle] and 0 < scores[own] < scores[idle]


def test_prompts_still_prefilling_count_as_load_once() -> None:
    # Both read one 4,000-token prompt: one still queued at the worker, the other
    # admitted there (its queue is empty) and not at its first token yet.
    queued = cand("a", queued_tokens=4000, in_flight=1)
    reading = cand("b", prefilling_tokens=4000, in_flight=1)
    both = cand("c", queued_tokens=4000, prefilling_tokens=4000, in_flight=1)
    decoding = cand("d", in_flight=2)  # two short replies streaming
    scores = QueueScorer().score(req(), [queued, reading, both, decoding], cycle())
    assert scores[queued] == scores[reading] == scores[both]  # the same requests, once
    assert scores[reading] < scores[decoding]
