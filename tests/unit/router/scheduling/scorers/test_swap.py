from router.scheduling.scorers.swap import SwapScorer
from tests.unit.router.scheduling.plugin_kit import COLD, LOADING, WARM, cand, cycle, req


def test_warm_beats_loading_beats_cold() -> None:
    warm, loading, cold = cand("a", residency=WARM), cand("b", residency=LOADING), cand("c")
    scores = SwapScorer().score(req(), [warm, loading, cold], cycle())
    assert scores[warm] > scores[loading] > scores[cold]


def test_cold_model_prefers_the_worker_with_most_free_budget() -> None:
    roomy = cand("a", residency=COLD, memory_budget_bytes=100, memory_used_bytes=10)
    full = cand("b", residency=COLD, memory_budget_bytes=100, memory_used_bytes=90)
    scores = SwapScorer().score(req(), [roomy, full], cycle())
    assert scores[roomy] > scores[full] >= 0
