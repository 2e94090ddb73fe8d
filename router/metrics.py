"""The router's Prometheus metrics. The names are a contract with the Helm chart's
dashboards, alerts and autoscaling: change them only together (docs/operations.md lists
every series and what bounds its labels).

Label values come from the registry's catalogue (model keys, A/B arm names), the
configured API key names, the router's worker pool and fixed enums, never from request
text, so the series count stays bounded by what an operator configured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modelyard.v1 import router_pb2

# Seconds; covers a warm TTFT on a GPU (ms) to a cold load on a CPU (tens of s).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)

# The advisory buckets of the OpenTelemetry GenAI semantic conventions for these metrics.
GENAI_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
)  # fmt: skip
GENAI_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
GENAI_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92
)  # fmt: skip
# OTel attribute names become Prometheus labels with dots replaced by underscores.
GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                "gen_ai_response_model")  # fmt: skip

# The breaker series' `state` values, one series per worker and state (1 for the current).
BREAKER_STATES = {
    router_pb2.BREAKER_STATE_CLOSED: "closed",
    router_pb2.BREAKER_STATE_HALF_OPEN: "half_open",
    router_pb2.BREAKER_STATE_OPEN: "open",
}
# Kinds of the token counters: prompt, generated, prompt tokens served from the worker's
# prefix cache (part of input, not in addition to it), and output tokens the router
# replayed from its response cache (no worker generated them: not in output).
TOKEN_KINDS = ("input", "output", "cached", "replayed")


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


class _Breakers(Collector):
    """modelyard_router_breaker_state{worker,state}, computed at scrape time from the
    breakers of the workers in the pool (a worker that left takes its series along)."""

    def __init__(self, source: Callable[[], dict[str, router_pb2.BreakerState.ValueType]]):
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "modelyard_router_breaker_state",
            "Circuit breaker per worker: 1 on the series of its current state "
            "(closed, half_open, open), 0 on the others.",
            labels=["worker", "state"],
        )
        for worker, state in sorted(self._source().items()):
            current = BREAKER_STATES.get(state, "closed")
            for name in BREAKER_STATES.values():
                family.add_metric([worker, name], 1.0 if name == current else 0.0)
        yield family


def _histogram(
    registry: CollectorRegistry,
    name: str,
    doc: str,
    labels: tuple[str, ...],
    buckets: tuple[float, ...],
) -> Histogram:
    return Histogram(name, doc, list(labels), buckets=buckets, registry=registry)


class RouterMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelyard_router_requests",
            "Requests finished by the router, by model, A/B arm and gRPC status code.",
            ["model", "arm", "code"],
            registry=r,
        )
        self.tokens = Counter(
            "modelyard_router_tokens",
            "Tokens of the requests the router finished, by model and kind (input, output, "
            "cached: input tokens the worker's prefix cache served; replayed: output tokens "
            "answered from the router's response cache, not in output).",
            ["model", "kind"],
            registry=r,
        )
        self.client_tokens = Counter(
            "modelyard_router_client_tokens",
            "Tokens served per client API key (by its configured name) and kind "
            "(input, output; replayed: output answered from the response cache): usage per key.",
            ["api_key", "kind"],
            registry=r,
        )
        self.ttft = _histogram(
            r,
            "modelyard_router_ttft_seconds",
            "Time to first token as the router sees it (routing and retries included).",
            ("model", "arm"),
            TTFT_BUCKETS,
        )
        self.inter_token = _histogram(
            r,
            "modelyard_router_inter_token_seconds",
            "Mean gap between tokens of one stream.",
            ("model", "arm"),
            INTER_TOKEN_BUCKETS,
        )
        self.queue = _histogram(
            r,
            "modelyard_router_queue_seconds",
            "Time the request waited in the worker's queue, as the worker reported it.",
            ("model",),
            QUEUE_BUCKETS,
        )
        self.duration = _histogram(
            r,
            "modelyard_router_request_duration_seconds",
            "From the request's arrival at the router to the end of its stream (OK only).",
            ("model", "arm"),
            DURATION_BUCKETS,
        )
        self.retries = Counter(
            "modelyard_router_retries",
            "Attempts beyond the first, on another worker or a fallback model.",
            registry=r,
        )
        self.genai = GenAiMetrics(r)
        self.response_cache = ResponseCacheMetrics(r)

    def watch_healthy_workers(self, source: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_HealthyWorkers(source))

    def watch_breakers(
        self, source: Callable[[], dict[str, router_pb2.BreakerState.ValueType]]
    ) -> None:
        self.registry.register(_Breakers(source))


class ResponseCacheMetrics:
    """The router's response cache (router/cache/): lookups, stores, evictions, backend
    failures and the bytes the in-process backend holds."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.lookups = Counter(
            "modelyard_router_response_cache_lookups",
            "Lookups of cacheable requests, by result (hit, miss; a failed backend is a miss; "
            "shared: a miss an identical request in flight answered, counted as a miss too).",
            ["result"],
            registry=r,
        )
        self.stores = Counter(
            "modelyard_router_response_cache_stores",
            "Complete answers offered to the cache, by result (stored, too_large).",
            ["result"],
            registry=r,
        )
        self.evictions = Counter(
            "modelyard_router_response_cache_evictions",
            "Live entries the in-process cache dropped to stay under its byte bound.",
            registry=r,
        )
        self.backend_errors = Counter(
            "modelyard_router_response_cache_backend_errors",
            "Cache backend calls that failed or timed out, by operation (get, put); "
            "the request was served by a worker all the same.",
            ["op"],
            registry=r,
        )
        self.bytes = Gauge(
            "modelyard_router_response_cache_bytes",
            "Bytes of entries the in-process cache holds (0 with a shared store).",
            registry=r,
        )


class GenAiMetrics:
    """The OpenTelemetry GenAI server metrics (gen_ai.server.*), named as the OTel to
    Prometheus mapping names them (dots to underscores, the unit as a suffix)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.ttft = _histogram(
            r,
            "gen_ai_server_time_to_first_token_seconds",
            "gen_ai.server.time_to_first_token: time to generate the first token.",
            GENAI_LABELS,
            GENAI_TTFT_BUCKETS,
        )
        self.time_per_output_token = _histogram(
            r,
            "gen_ai_server_time_per_output_token_seconds",
            "gen_ai.server.time_per_output_token: time per output token after the first.",
            GENAI_LABELS,
            GENAI_TPOT_BUCKETS,
        )
        self.duration = _histogram(
            r,
            "gen_ai_server_request_duration_seconds",
            "gen_ai.server.request.duration: time from request to the end of the response "
            "(requests that finished OK).",
            GENAI_LABELS,
            GENAI_DURATION_BUCKETS,
        )


def serve_metrics(metrics: RouterMetrics, host: str, port: int) -> Callable[[], None]:
    """Serve /metrics on host:port in a thread; returns the function that stops it."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server.shutdown
