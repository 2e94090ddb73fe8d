"""What one finished or failed request adds to the router's /metrics: latency histograms
with model and arm, token counters by kind, the gen_ai.server.* histograms."""

from __future__ import annotations

from modelyard.v1 import common_pb2
from router.accounting import Accounting
from router.breaker import BreakerBoard
from router.metrics import RouterMetrics
from router.state.latency import LatencyEstimates
from router.stats import Outcome, RoutingStats

MODEL = {"model": "m@1"}


def _accounting() -> tuple[Accounting, RouterMetrics]:
    metrics = RouterMetrics()
    return Accounting(BreakerBoard(), LatencyEstimates(), RoutingStats(), metrics), metrics


def _finished(output_tokens: int = 11) -> common_pb2.GenerationFinished:
    return common_pb2.GenerationFinished(
        usage=common_pb2.Usage(
            input_tokens=20, output_tokens=output_tokens, cached_input_tokens=16
        ),
        timings=common_pb2.Timings(queue_ms=300, decode_ms=1000),
    )


def test_a_finished_request_fills_histograms_and_token_counters() -> None:
    acct, metrics = _accounting()
    finished = _finished()
    outcome = Outcome(
        model="m", version="1", route="r", arm="b", usage=finished.usage, ttft_ms=250, total_ms=1500
    )
    acct.finished("req-1", "w:1", outcome, finished, operation="chat")

    def value(name: str, labels: dict[str, str]) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    arm = {**MODEL, "arm": "b"}
    assert value("modelyard_router_ttft_seconds_count", arm) == 1
    assert value("modelyard_router_ttft_seconds_sum", arm) == 0.25
    # 1000 ms of decode over 10 gaps between 11 tokens.
    assert value("modelyard_router_inter_token_seconds_sum", arm) == 0.1
    assert value("modelyard_router_request_duration_seconds_sum", arm) == 1.5
    assert value("modelyard_router_queue_seconds_sum", MODEL) == 0.3
    for kind, n in (("input", 20), ("output", 11), ("cached", 16)):
        assert value("modelyard_router_tokens_total", {**MODEL, "kind": kind}) == n
    assert value("modelyard_router_requests_total", {**arm, "code": "OK"}) == 1
    genai = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "modelyard",
        "gen_ai_request_model": "r",  # the route the client named
        "gen_ai_response_model": "m@1",
    }
    assert value("gen_ai_server_time_to_first_token_seconds_sum", genai) == 0.25
    assert value("gen_ai_server_time_per_output_token_seconds_sum", genai) == 0.1
    assert value("gen_ai_server_request_duration_seconds_sum", genai) == 1.5


def test_a_failed_request_counts_its_code_and_tokens_only() -> None:
    acct, metrics = _accounting()
    usage = common_pb2.Usage(input_tokens=5, output_tokens=2)
    acct.failed("req-2", Outcome(model="m", version="1", ok=False, usage=usage), "UNAVAILABLE")

    def value(name: str, labels: dict[str, str]) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("modelyard_router_requests_total", {**MODEL, "arm": "", "code": "UNAVAILABLE"})
    assert value("modelyard_router_tokens_total", {**MODEL, "kind": "output"}) == 2
    assert value("modelyard_router_ttft_seconds_count", {**MODEL, "arm": ""}) is None
