"""Synthetic series for `promtool test rules`: for every alert of the chart, series that make
it fire and series beside them that must stay silent, in the label shapes the services
export once scraped through the chart's ServiceMonitor (tests/ops/prom.py target_labels).

Every case evaluates at one time, with one interval of 1m between samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from router.metrics import TTFT_BUCKETS
from tests.ops.prom import NAMESPACE, series, target_labels

ROUTER = target_labels("router")
ROUTER_2 = {**ROUTER, "pod": "modelyard-router-1", "instance": "10.0.1.1:9464"}
WORKER = target_labels("worker", "a100")


@dataclass
class Case:
    alert: str
    eval_time: str
    # series name with labels -> promtool's expanding notation of its values.
    input: dict[str, str] = field(default_factory=dict)
    # The labels of each alert expected to fire (severity from the rule added).
    firing: list[dict[str, str]] = field(default_factory=list)
    # The description the firing alert renders (its labels and value filled in).
    description: str = ""
    severity: str = "warning"

    def promtool(self) -> dict[str, Any]:
        return {
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in self.input.items()],
            "alert_rule_test": [
                {
                    "eval_time": self.eval_time,
                    "alertname": self.alert,
                    "exp_alerts": [
                        {
                            "exp_labels": {**labels, "severity": self.severity},
                            "exp_annotations": {"description": self.description},
                        }
                        for labels in self.firing
                    ],
                }
            ],
        }


def _queue_growing() -> Case:
    def queued(model: str) -> str:
        return series("modelyard_worker_queued_tokens", {**WORKER, "model": model})

    return Case(
        "ModelyardQueueGrowing",
        "25m",
        {
            queued("growing@1"): "0+2000x40",  # 2000 tokens a minute, over 1000
            queued("slow@1"): "0+500x40",  # grows, under the threshold
            queued("long@1"): "50000x40",  # long but not growing
        },
        [{"namespace": NAMESPACE, "model": "growing@1"}],
        "Queued tokens for growing@1 grow by 2k per minute: add replicas to its pool or "
        "check the autoscaler.",
    )


def _breaker_open() -> Case:
    def state(router: dict[str, str], worker: str, name: str) -> str:
        return series("modelyard_router_breaker_state", {**router, "worker": worker, "state": name})

    return Case(
        "ModelyardBreakerOpen",
        "20m",
        {
            # Open on one router for the whole time: fires.
            state(ROUTER, "10.0.0.5:50051", "open"): "1x30",
            state(ROUTER, "10.0.0.5:50051", "closed"): "0x30",
            state(ROUTER_2, "10.0.0.5:50051", "open"): "0x30",
            state(ROUTER_2, "10.0.0.5:50051", "closed"): "1x30",
            # Closed: silent, although the series of its open state exists.
            state(ROUTER, "10.0.0.6:50051", "open"): "0x30",
            state(ROUTER, "10.0.0.6:50051", "closed"): "1x30",
            # Open 3 minutes (less than `for: 5m`), then half-open: silent.
            state(ROUTER, "10.0.0.7:50051", "open"): "0x15 1x3 0x12",
            state(ROUTER, "10.0.0.7:50051", "half_open"): "0x18 1x12",
        },
        [{"namespace": NAMESPACE, "worker": "10.0.0.5:50051"}],
        "Routers have kept the breaker of 10.0.0.5:50051 open for 5 minutes: the worker "
        "fails its requests.",
    )


def _no_healthy_worker() -> Case:
    def healthy(router: dict[str, str], model: str) -> str:
        return series("modelyard_router_healthy_workers", {**router, "model": model})

    return Case(
        "ModelyardNoHealthyWorker",
        "10m",
        {
            healthy(ROUTER, "gone@1"): "0x20",
            healthy(ROUTER_2, "gone@1"): "0x20",
            healthy(ROUTER, "fine@1"): "2x20",
            # One router lost it, the other still sees a worker: silent.
            healthy(ROUTER, "partial@1"): "0x20",
            healthy(ROUTER_2, "partial@1"): "1x20",
        },
        [{"namespace": NAMESPACE, "model": "gone@1"}],
        "Requests for gone@1 fail or fall back: no worker that can serve it passes its "
        "health check.",
        severity="critical",
    )


def _high_error_rate() -> Case:
    def requests(model: str, code: str) -> str:
        labels = {**ROUTER, "model": model, "arm": "", "code": code}
        return series("modelyard_router_requests_total", labels)

    return Case(
        "ModelyardHighErrorRate",
        "20m",
        {
            requests("failing@1", "OK"): "0+100x30",
            requests("failing@1", "UNAVAILABLE"): "0+10x30",  # 9 % of requests
            requests("healthy@1", "OK"): "0+100x30",
            requests("healthy@1", "DEADLINE_EXCEEDED"): "0+1x30",  # 1 %: silent
        },
        [{"namespace": NAMESPACE, "model": "failing@1"}],
        "9.091% of requests for failing@1 end with a non-OK status.",
    )


def _ttft_p95_high() -> Case:
    def buckets(model: str, slowest_le: float) -> Iterator[tuple[str, str]]:
        """Every request of `model` lands in the bucket `le=slowest_le`."""
        for le in (*TTFT_BUCKETS, float("inf")):
            labels = {
                **ROUTER,
                "model": model,
                "arm": "",
                "le": "+Inf" if le == float("inf") else str(le),
            }
            name = series("modelyard_router_ttft_seconds_bucket", labels)
            yield name, ("0+10x40" if le >= slowest_le else "0x40")

    return Case(
        "ModelyardTTFTP95High",
        "25m",
        {**dict(buckets("slow@1", 5.0)), **dict(buckets("fast@1", 0.1))},
        [{"namespace": NAMESPACE, "model": "slow@1"}],
        "p95 time to first token of slow@1 is 4.875s (objective 2s).",
    )


CASES = [
    _queue_growing(),
    _breaker_open(),
    _no_healthy_worker(),
    _high_error_rate(),
    _ttft_p95_high(),
]


def promtool_tests(rule_file: str) -> dict[str, Any]:
    return {
        "rule_files": [rule_file],
        "evaluation_interval": "1m",
        "tests": [case.promtool() for case in CASES],
    }
