from modelyard.refs import model_key
from modelyard.v1 import common_pb2
from router.state.latency import LatencyEstimates, prefill_ms_per_token

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


def test_prefill_per_evaluated_token_comes_from_the_workers_timings() -> None:
    def finished(ttft: float, inputs: int, cached: int) -> common_pb2.GenerationFinished:
        return common_pb2.GenerationFinished(
            usage=common_pb2.Usage(input_tokens=inputs, cached_input_tokens=cached),
            timings=common_pb2.Timings(queue_ms=100.0, load_ms=50.0, ttft_ms=ttft),
        )

    # 550 ms to the first token, 150 of them queue and load: 400 ms for 200 tokens.
    assert prefill_ms_per_token(finished(550.0, 1000, 800)) == 2.0
    assert prefill_ms_per_token(finished(550.0, 100, 90)) is None  # 10 tokens: too few
    assert prefill_ms_per_token(finished(120.0, 1000, 0)) is None  # nothing left to count
    est = LatencyEstimates(alpha=0.5)
    est.observe("w", M, prefill_ms_per_token=2.0)
    est.observe("w", M, prefill_ms_per_token=4.0)
    assert est.get("w", M).prefill_ms_per_token == 3.0
