from router.scheduling.filters.latency_ceiling import LatencyCeilingFilter
from tests.unit.router.scheduling.plugin_kit import WARM, cand, cycle, req


def test_no_ceiling_keeps_all() -> None:
    slow = cand(ttft_ms=5000.0, residency=WARM)
    assert list(LatencyCeilingFilter().filter(req(), [slow], cycle())) == [slow]


def test_drops_candidates_predicted_over_the_ceiling() -> None:
    fast = cand("fast", ttft_ms=50.0, residency=WARM)
    slow = cand("slow", ttft_ms=900.0, residency=WARM)
    state = cycle()
    assert list(LatencyCeilingFilter().filter(req(max_ttft_ms=300), [fast, slow], state)) == [fast]
    assert "predicted TTFT 900 ms" in state.describe_rejections()


def test_a_cold_model_pays_its_load_time() -> None:
    cold = cand("cold", ttft_ms=50.0)
    assert list(LatencyCeilingFilter().filter(req(max_ttft_ms=300), [cold], cycle())) == []
