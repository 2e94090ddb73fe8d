from router.scheduling.scorers.latency import LatencyScorer
from tests.unit.router.scheduling.plugin_kit import WARM, cand, cycle, req


def test_lowest_predicted_ttft_scores_one() -> None:
    fast = cand("fast", ttft_ms=100.0, residency=WARM)
    slow = cand("slow", ttft_ms=400.0, residency=WARM)
    scores = LatencyScorer().score(req(), [fast, slow], cycle())
    assert scores[fast] == 1.0 and scores[slow] == 0.25


def test_open_streams_and_cold_loads_raise_the_prediction() -> None:
    idle = cand("idle", ttft_ms=100.0, residency=WARM)
    loaded = cand("loaded", ttft_ms=100.0, residency=WARM, in_flight=5, inter_token_ms=40.0)
    cold = cand("cold", ttft_ms=100.0)
    scores = LatencyScorer().score(req(), [idle, loaded, cold], cycle())
    assert scores[idle] == 1.0 > scores[loaded] > scores[cold]


def test_unmeasured_worker_borrows_the_models_mean() -> None:
    known = cand("known", ttft_ms=300.0, residency=WARM)
    fresh = cand("fresh", residency=WARM)
    scores = LatencyScorer().score(req(), [known, fresh], cycle())
    assert scores[known] == scores[fresh] == 1.0
