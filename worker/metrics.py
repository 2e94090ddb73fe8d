"""Prometheus metrics read straight from the worker's status at scrape time.

A collector (rather than gauges updated in place) keeps one source of truth:
the same counters GetStatus reports.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from modelyard.loop_call import loop_caller
from modelyard.output_length import OutputEstimate
from modelyard.v1 import worker_pb2
from worker.residency import ModelManager
from worker.status import model_status

log = logging.getLogger(__name__)


class WorkerCollector(Collector):
    def __init__(self, manager: ModelManager, estimate: OutputEstimate | None = None) -> None:
        self._manager = manager
        self._estimate = estimate
        # Scrapes run on prometheus_client's thread; the manager changes on the loop.
        self._families = loop_caller(lambda: [*self._worker_metrics(), *self._model_metrics()])

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        yield from self._families()

    def _worker_metrics(
        self,
    ) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        mgr, stats = self._manager, self._manager.stats
        yield GaugeMetricFamily(
            "modelyard_worker_memory_budget_bytes",
            "Memory the loaded models may use together.",
            value=mgr.budget_bytes,
        )
        yield GaugeMetricFamily(
            "modelyard_worker_memory_used_bytes",
            "Memory the models loading, warm or draining hold (measured, floored by estimates).",
            value=mgr.used_bytes,
        )
        loads = CounterMetricFamily(
            "modelyard_worker_model_loads",
            "Model loads by result (loaded, failed).",
            labels=["result"],
        )
        for result in ("loaded", "failed"):
            loads.add_metric([result], stats.loads[result])
        yield loads
        durations = HistogramMetricFamily(
            "modelyard_worker_model_load_duration_seconds",
            "Time from the start of a load (fetch included) until warm or failed.",
        )
        durations.add_metric([], stats.durations.cumulative(), stats.durations.sum)
        yield durations
        yield CounterMetricFamily(
            "modelyard_worker_evictions",
            "Idle models unloaded to make room for another.",
            value=stats.evictions,
        )
        rejected = CounterMetricFamily(
            "modelyard_worker_rejected_requests",
            "Requests refused or ended before decoding, by reason: queue_full, too_large, "
            "shed, deadline (in the queue), not_loaded, draining.",
            labels=["model", "reason"],
        )
        counts = collections.Counter(stats.rejected)
        for r in mgr.residents():
            for reason, n in r.queue.rejected.items():
                counts[r.key, reason] += n
        for (model, reason), n in sorted(counts.items()):
            rejected.add_metric([model, reason], n)
        yield rejected

    def _model_metrics(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        families = [
            (kind(name, doc, labels=["model"]), value) for kind, name, doc, value in MODEL_FAMILIES
        ]
        expected = GaugeMetricFamily(
            "modelyard_worker_expected_output_tokens",
            "Output tokens admission and queued tokens plan for a request that left "
            "max_tokens unset: the running mean of such outputs (seeded by "
            "MODELYARD_WORKER_EXPECTED_OUTPUT_TOKENS).",
            labels=["model"],
        )
        for r in self._manager.residents():
            m = model_status(r)
            for family, value in families:
                family.add_metric([r.key], value(m))
            if self._estimate is not None:
                expected.add_metric([r.key], self._estimate.expected(r.key))
        yield from (family for family, _ in families)
        if self._estimate is not None:
            yield expected


# Per-model families read from ModelStatus: (family type, name, help, value). Throughput is
# rate(generated_tokens_total): no rate gauge (ModelStatus keeps one).
MODEL_FAMILIES: tuple[
    tuple[
        type[GaugeMetricFamily] | type[CounterMetricFamily],
        str,
        str,
        Callable[[worker_pb2.ModelStatus], float],
    ],
    ...,
] = (
    (
        GaugeMetricFamily,
        "modelyard_worker_running_sequences",
        "Sequences decoding now.",
        lambda m: m.running_sequences,
    ),
    (
        GaugeMetricFamily,
        "modelyard_worker_queued_requests",
        "Requests waiting in the queue.",
        lambda m: m.queued_requests,
    ),
    (
        GaugeMetricFamily,
        "modelyard_worker_queued_tokens",
        "Prompt plus max_tokens (or the expected output) of the queued requests.",
        lambda m: m.queued_tokens,
    ),
    (
        CounterMetricFamily,
        "modelyard_worker_generated_tokens",
        "Tokens generated since the worker started.",
        lambda m: m.generated_tokens_total,
    ),
    (
        GaugeMetricFamily,
        "modelyard_worker_model_memory_bytes",
        "Memory a model holds.",
        lambda m: m.memory_bytes,
    ),
    (
        GaugeMetricFamily,
        "modelyard_worker_in_flight_requests",
        "Requests holding a model.",
        lambda m: m.in_flight,
    ),
    (
        CounterMetricFamily,
        "modelyard_worker_prompt_tokens",
        "Prompt tokens of finished requests since the worker started.",
        lambda m: m.prefix_cache.prompt_tokens_total,
    ),
    (
        CounterMetricFamily,
        "modelyard_worker_cached_prompt_tokens",
        "Prompt tokens the prefix cache served instead of evaluating (the hit rate: "
        "their rate over that of modelyard_worker_prompt_tokens).",
        lambda m: m.prefix_cache.cached_prompt_tokens_total,
    ),
    (
        GaugeMetricFamily,
        "modelyard_worker_prefix_cache_tokens",
        "KV cells (tokens) finished requests' prefixes hold now.",
        lambda m: m.prefix_cache.cached_tokens,
    ),
)


def metrics_registry(
    manager: ModelManager, estimate: OutputEstimate | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(WorkerCollector(manager, estimate))
    return registry


def serve_metrics(
    manager: ModelManager, host: str, port: int, estimate: OutputEstimate | None = None
) -> Callable[[], None]:
    """Expose /metrics on host:port from a background thread; returns the stop function."""
    registry = metrics_registry(manager, estimate)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("worker metrics on http://%s:%d/metrics", host, server.server_port)
    return server.shutdown
