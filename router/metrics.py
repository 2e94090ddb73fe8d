"""The router's Prometheus metrics. The names are a contract with the Helm chart's
dashboards and autoscaling: change them only together."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modelyard.v1 import router_pb2

# Seconds; covers a warm TTFT on a GPU (ms) to a cold load on a CPU (tens of s).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)

# The gauge's values: 0 closed, 1 half-open, 2 open.
BREAKER_VALUE = {
    router_pb2.BREAKER_STATE_UNSPECIFIED: 0,
    router_pb2.BREAKER_STATE_CLOSED: 0,
    router_pb2.BREAKER_STATE_HALF_OPEN: 1,
    router_pb2.BREAKER_STATE_OPEN: 2,
}


class _HealthyWorkers(Collector):
    """modelyard_router_healthy_workers{model}, computed at scrape time."""

    def __init__(self, source: Callable[[], dict[str, int]]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "modelyard_router_healthy_workers",
            "Workers reporting status, breaker not open, with the model warm.",
            labels=["model"],
        )
        for model, count in sorted(self._source().items()):
            family.add_metric([model], count)
        yield family


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelyard_router_requests",
            "Requests finished by the router, by model, A/B arm and gRPC status code.",
            ["model", "arm", "code"],
            registry=self.registry,
        )
        self.client_tokens = Counter(
            "modelyard_router_client_tokens",
            "Tokens served per client API key (by its configured name) and kind "
            "(input, output): usage per key.",
            ["api_key", "kind"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "modelyard_router_ttft_seconds",
            "Time to first token as the router sees it (routing and retries included).",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.inter_token = Histogram(
            "modelyard_router_inter_token_seconds",
            "Mean gap between tokens of one stream.",
            buckets=INTER_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "modelyard_router_retries",
            "Attempts beyond the first, on another worker or a fallback model.",
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "modelyard_router_breaker_state",
            "Circuit breaker per worker: 0 closed, 1 half-open, 2 open.",
            ["worker"],
            registry=self.registry,
        )

    def set_breaker(self, worker: str, state: router_pb2.BreakerState.ValueType) -> None:
        self.breaker_state.labels(worker=worker).set(BREAKER_VALUE.get(state, 0))

    def forget_worker(self, worker: str) -> None:
        """Drop the series of a worker that left the pool."""
        with contextlib.suppress(KeyError):
            self.breaker_state.remove(worker)

    def watch_healthy_workers(self, source: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_HealthyWorkers(source))


def serve_metrics(metrics: RouterMetrics, host: str, port: int) -> Callable[[], None]:
    """Serve /metrics on host:port in a thread; returns the function that stops it."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server.shutdown
