from router.state.latency import LatencyEstimates


def test_ewma_per_worker_and_model() -> None:
    est = LatencyEstimates(alpha=0.5)
    assert est.get("w", "m@1").ttft_ms is None
    est.observe("w", "m@1", ttft_ms=100.0)
    est.observe("w", "m@1", ttft_ms=200.0, inter_token_ms=10.0)
    assert est.get("w", "m@1").ttft_ms == 150.0
    assert est.get("w", "m@1").inter_token_ms == 10.0
    assert est.get("other", "m@1").ttft_ms is None


def test_bounded_number_of_pairs() -> None:
    est = LatencyEstimates(max_pairs=2)
    for w in ("a", "b", "c"):
        est.observe(w, "m", ttft_ms=1.0)
    assert est.get("a", "m").ttft_ms is None and est.get("c", "m").ttft_ms == 1.0
