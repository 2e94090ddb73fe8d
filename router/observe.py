"""What one finished request adds to the router's metrics (histograms and token counters),
apart from the accounting that also feeds breakers, estimates and stats."""

from __future__ import annotations

from modelyard.genai import PROVIDER
from modelyard.v1 import common_pb2
from router.metrics import RouterMetrics
from router.stats import Outcome


def count_tokens(metrics: RouterMetrics, model: str, usage: common_pb2.Usage) -> None:
    tokens = metrics.tokens
    tokens.labels(model=model, kind="input").inc(usage.input_tokens)
    tokens.labels(model=model, kind="output").inc(usage.output_tokens)
    tokens.labels(model=model, kind="cached").inc(usage.cached_input_tokens)


def observe_finished(
    metrics: RouterMetrics,
    outcome: Outcome,
    finished: common_pb2.GenerationFinished,
    operation: str,
) -> None:
    """The latency histograms of a request that finished OK."""
    model, arm = outcome.label, outcome.arm
    tokens = finished.usage.output_tokens
    per_token_s = finished.timings.decode_ms / (tokens - 1) / 1000 if tokens > 1 else None
    metrics.queue.labels(model=model).observe(finished.timings.queue_ms / 1000)
    genai = metrics.genai
    # The route's name when the client named a route: what it asked for.
    labels = (operation, PROVIDER, outcome.route or outcome.model, model)
    if outcome.ttft_ms is not None:
        metrics.ttft.labels(model=model, arm=arm).observe(outcome.ttft_ms / 1000)
        genai.ttft.labels(*labels).observe(outcome.ttft_ms / 1000)
    if per_token_s is not None:
        metrics.inter_token.labels(model=model, arm=arm).observe(per_token_s)
        genai.time_per_output_token.labels(*labels).observe(per_token_s)
    if outcome.total_ms is not None:
        metrics.duration.labels(model=model, arm=arm).observe(outcome.total_ms / 1000)
        genai.duration.labels(*labels).observe(outcome.total_ms / 1000)
