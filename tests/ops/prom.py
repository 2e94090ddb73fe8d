"""Helpers of the tests that run the chart's PromQL on a real Prometheus: the binaries
(Debian's `prometheus` package, which scripts/setup.sh dev installs), the rules and
queries of a rendered chart, and the label shapes the services' metrics have once
scraped through the chart's ServiceMonitor."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.ops.chart import CHART

NAMESPACE = "modelyard"


# What a ServiceMonitor target adds to every series (prometheus-operator's defaults plus
# the chart's podTargetLabels, modelyard.io/pool and app.kubernetes.io/component).
def target_labels(service: str, pool: str = "") -> dict[str, str]:
    job = f"modelyard-{service}" + (f"-{pool}" if pool else "")
    labels = {
        "namespace": NAMESPACE,
        "job": job,
        "service": job,
        "endpoint": "metrics",
        "pod": f"{job}-0",
        "instance": f"10.0.0.{len(job)}:9464",
        "app_kubernetes_io_component": service,
    }
    if pool:
        labels["modelyard_io_pool"] = pool
    return labels


def binary(name: str) -> str:
    """The path of `promtool` or `prometheus`; fails (never skips) when it is missing."""
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    assert found, f"{name} is not installed: run `bash scripts/setup.sh dev` (apt: prometheus)"
    return found


def render_rules(helm: Path, *args: str) -> dict[str, Any]:
    """The rule groups of the chart's PrometheusRule, as a Prometheus rule file holds them."""
    result = subprocess.run(
        [
            str(helm), "template", "modelyard", str(CHART), "--namespace", NAMESPACE,
            "--set", "metrics.prometheusRule.enabled=true",
            "--show-only", "templates/prometheusrule.yaml", *args,
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (rule,) = [d for d in yaml.safe_load_all(result.stdout) if d]
    return {"groups": rule["spec"]["groups"]}


def alerts(rules: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def series(name: str, labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


_COMPARISON = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*[-+0-9.eE]+\s*$")


def without_threshold(expr: str) -> str:
    """An alert's expression without its final comparison: the series it watches, which
    exist (with the alert's labels) whether or not the alert fires."""
    return _COMPARISON.sub("", expr.strip())


_TEMPLATE_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")


def needed_labels(*texts: str) -> set[str]:
    """The labels an alert's annotations ($labels.x) or an expression's `by (...)` need."""
    found: set[str] = set()
    for text in texts:
        found.update(_TEMPLATE_LABEL.findall(text))
        for group in _BY.findall(text):
            found.update(x.strip() for x in group.split(",") if x.strip() and x.strip() != "le")
    return found
