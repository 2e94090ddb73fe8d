"""What happens after each attempt and each request: breakers, latency estimates,
stats and metrics, in one place so the relay only reports outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from modelyard.genai import CHAT
from modelyard.refs import ModelKey, model_key
from modelyard.v1 import common_pb2
from router.breaker import BreakerBoard
from router.metrics import RouterMetrics
from router.observe import count_tokens, observe_finished
from router.state.latency import LatencyEstimates, prefill_ms_per_token
from router.stats import Outcome, RoutingStats


class OutcomeSink(Protocol):
    """Where finished requests' outcomes go besides the local stats (the registry)."""

    def record(
        self, request_id: str, outcome: Outcome, *, worker: str = "", code: str = "OK"
    ) -> None: ...


@dataclass
class Accounting:
    breakers: BreakerBoard
    latency: LatencyEstimates
    stats: RoutingStats
    metrics: RouterMetrics | None = None
    outcomes: OutcomeSink | None = None

    def attempt_failed(self, worker: str) -> None:
        """A worker failed before the first token (or mid-stream): its breaker hears it."""
        self.breakers.on_failure(worker)

    def forget_worker(self, worker: str) -> None:
        """A worker left the pool: its breaker goes with it (its breaker series, read
        from the pool at scrape time, too)."""
        self.breakers.forget(worker)

    def retried(self) -> None:
        if self.metrics is not None:
            self.metrics.retries.inc()

    def first_token(
        self, worker: str, model: ModelKey, *, ewma_ms: float, client_ms: float
    ) -> None:
        """`ewma_ms`: from opening the worker call (the worker's own speed, for
        scheduling); `client_ms`: from the request's arrival (what the client saw; the
        metrics take it from the finished request's outcome, with its labels)."""
        self.latency.observe(worker, model, ttft_ms=ewma_ms)

    def finished(
        self,
        request_id: str,
        worker: str,
        outcome: Outcome,
        finished: common_pb2.GenerationFinished,
        *,
        operation: str = CHAT,
    ) -> None:
        self.breakers.on_success(worker)
        tokens = finished.usage.output_tokens
        inter_token_ms = finished.timings.decode_ms / (tokens - 1) if tokens > 1 else None
        self.latency.observe(
            worker,
            model_key(outcome.model, outcome.version),
            inter_token_ms=inter_token_ms,
            prefill_ms_per_token=prefill_ms_per_token(finished),
        )
        if self.metrics is not None:
            observe_finished(self.metrics, outcome, finished, operation)
        self.stats.record(request_id, outcome)
        if self.outcomes is not None:
            self.outcomes.record(request_id, outcome, worker=worker)
        self._count(outcome, "OK")

    def cached(self, request_id: str, outcome: Outcome) -> None:
        """Answered from the router's response cache: stats count it as cached (no cost,
        no latency sample); no worker was involved, so breakers and EWMAs hear nothing."""
        self.stats.record(request_id, outcome)
        if self.outcomes is not None:
            self.outcomes.record(request_id, outcome)  # mesh-wide stats count hits too
        if self.metrics is not None:
            self.metrics.requests.labels(model=outcome.label, arm=outcome.arm, code="OK").inc()
            replayed = outcome.usage.output_tokens if outcome.usage is not None else 0
            self.metrics.tokens.labels(model=outcome.label, kind="replayed").inc(replayed)
            if outcome.client:
                tokens = self.metrics.client_tokens
                tokens.labels(api_key=outcome.client, kind="replayed").inc(replayed)

    def failed(self, request_id: str, outcome: Outcome, code: str) -> None:
        self.stats.record(request_id, outcome)
        if self.outcomes is not None:
            self.outcomes.record(request_id, outcome, code=code)
        self._count(outcome, code)

    def _count(self, outcome: Outcome, code: str) -> None:
        if self.metrics is not None:
            labels = {"model": outcome.label, "arm": outcome.arm, "code": code}
            self.metrics.requests.labels(**labels).inc()
            if outcome.usage is not None:
                count_tokens(self.metrics, outcome.label, outcome.usage)
            if outcome.client and outcome.usage is not None:
                # Key names come from configuration only: the label set stays bounded.
                tokens = self.metrics.client_tokens
                tokens.labels(api_key=outcome.client, kind="input").inc(outcome.usage.input_tokens)
                tokens.labels(api_key=outcome.client, kind="output").inc(
                    outcome.usage.output_tokens
                )
