from modelyard.refs import model_key
from router.state.latency import LatencyEstimates

M1 = model_key("m", "1")
M = model_key("m", "2")


def test_ewma_per_worker_and_model() -> None:
    est = LatencyEstimates(alpha=0.5)
    assert est.get("w", M1).ttft_ms is None
    est.observe("w", M1, ttft_ms=100.0)
    est.observe("w", M1, ttft_ms=200.0, inter_token_ms=10.0)
    assert est.get("w", M1).ttft_ms == 150.0
    assert est.get("w", M1).inter_token_ms == 10.0
    assert est.get("other", M1).ttft_ms is None


def test_bounded_number_of_pairs() -> None:
    est = LatencyEstimates(max_pairs=2)
    for w in ("a", "b", "c"):
        est.observe(w, M, ttft_ms=1.0)
    assert est.get("a", M).ttft_ms is None and est.get("c", M).ttft_ms == 1.0
