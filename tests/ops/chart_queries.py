"""Every PromQL query a rendered chart and its dashboards run, as Prometheus would receive
it, with the labels each result must carry for the rule, panel or autoscaler that uses it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tests.ops.chart import DASHBOARDS, Manifest
from tests.ops.prom import needed_labels, without_threshold

_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
_LABEL_VALUES = re.compile(r"^label_values\((\w+),\s*(\w+)\)$")
# Grafana's $__rate_interval is at least 4 scrape intervals: 1m holds many 1 s scrapes.
RATE_INTERVAL = "1m"


@dataclass(frozen=True)
class Query:
    where: str
    expr: str
    labels: frozenset[str]


def chart_queries(manifests: Sequence[Manifest], namespace: str) -> list[Query]:
    return [*_manifest_queries(manifests, namespace), *dashboard_queries(namespace)]


def _manifest_queries(manifests: Sequence[Manifest], namespace: str) -> Iterator[Query]:
    for m in manifests:
        where = f"{m['kind']}/{m['metadata']['name']}"
        if m["kind"] == "PrometheusRule":
            for group in m["spec"]["groups"]:
                for rule in group["rules"]:
                    texts = [rule["expr"], *rule.get("annotations", {}).values()]
                    # What the alert watches, whether or not it fires now.
                    expr = without_threshold(rule["expr"])
                    yield Query(f"{where}/{rule['alert']}", expr, frozenset(needed_labels(*texts)))
        elif m["kind"] == "ScaledObject":
            for t in m["spec"]["triggers"]:
                if t["type"] == "prometheus":
                    yield Query(f"{where}/{t['name']}", t["metadata"]["query"], frozenset())
        elif m["kind"] == "HorizontalPodAutoscaler":
            for metric in m["spec"]["metrics"]:
                if metric["type"] == "External":
                    yield Query(where, _adapter_query(metric["external"], namespace), frozenset())


def _adapter_query(external: dict[str, Any], namespace: str) -> str:
    """What prometheus-adapter runs for an External metric, by the rule docs/operations.md
    gives: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>), the HPA's namespace and
    selector as the matchers."""
    matchers = {"namespace": namespace, **external["metric"]["selector"]["matchLabels"]}
    inner = ",".join(f'{k}="{v}"' for k, v in matchers.items())
    return f"sum({external['metric']['name']}{{{inner}}})"


def dashboard_queries(namespace: str) -> Iterator[Query]:
    def substitute(expr: str) -> str:
        return expr.replace("$namespace", namespace).replace("$__rate_interval", RATE_INTERVAL)

    def walk(panels: list[dict[str, Any]], file: str) -> Iterator[Query]:
        for panel in panels:
            for target in panel.get("targets", []):
                expr = target["expr"]
                labels = needed_labels(expr) | set(_LEGEND.findall(target.get("legendFormat", "")))
                yield Query(f"{file}: {panel['title']}", substitute(expr), frozenset(labels))
            yield from walk(panel.get("panels", []), file)

    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        yield from walk(dashboard["panels"], path.name)
        for var in dashboard.get("templating", {}).get("list", []):
            match = _LABEL_VALUES.match(str(var.get("definition", "")))
            if match:  # Grafana's label_values(metric, label): the label's values
                metric, label = match.groups()
                expr = f"count by ({label}) ({metric})"
                yield Query(f"{path.name}: ${var['name']}", expr, frozenset({label}))
