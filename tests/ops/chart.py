"""Helpers shared by the chart tests: render with helm, read manifests, find metric names."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelyard"
DASHBOARDS = CHART / "dashboards"

Manifest = dict[str, Any]

# Metric names of the three services; label names such as modelyard_io_pool do not match.
METRIC_NAME = re.compile(r"\bmodelyard_(?:registry|worker|router)_[a-z0-9_]+\b")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Rendered:
    name: str
    manifests: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m.get("kind") == kind]

    def get(self, kind: str, name: str) -> Manifest:
        for m in self.of_kind(kind):
            if m["metadata"]["name"] == name:
                return m
        raise KeyError(f"{self.name}: no {kind}/{name}")


def parse(text: str) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(text) if d]


def load_rendered(directory: Path) -> dict[str, Rendered]:
    return {
        p.stem: Rendered(p.stem, parse(p.read_text())) for p in sorted(directory.glob("*.yaml"))
    }


def helm_template(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), "template", "modelyard", str(CHART), "--namespace", "modelyard", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def pod_specs(manifests: Sequence[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload and bare pod."""
    for m in manifests:
        kind = m.get("kind")
        name = f"{kind}/{m['metadata']['name']}"
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield name, m["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield name, m["spec"]


def promql_of(manifests: Sequence[Manifest]) -> dict[str, list[str]]:
    """Where each PromQL expression or metric name of the autoscalers and alerts comes from."""
    found: dict[str, list[str]] = {}
    for m in manifests:
        where = f"{m['kind']}/{m['metadata']['name']}"
        if m["kind"] == "ScaledObject":
            for t in m["spec"]["triggers"]:
                if t["type"] == "prometheus":
                    found.setdefault(where, []).append(t["metadata"]["query"])
        elif m["kind"] == "HorizontalPodAutoscaler":
            for metric in m["spec"]["metrics"]:
                if metric["type"] == "External":
                    found.setdefault(where, []).append(metric["external"]["metric"]["name"])
        elif m["kind"] == "PrometheusRule":
            for group in m["spec"]["groups"]:
                for rule in group["rules"]:
                    key = f"{where}/{rule.get('alert') or rule.get('record')}"
                    found.setdefault(key, []).append(rule["expr"])
    return found


def dashboard_exprs() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}

    def walk(panels: list[dict[str, Any]], file: str) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.setdefault(f"{file}: {panel['title']}", []).append(target["expr"])
            walk(panel.get("panels", []), file)

    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        walk(dashboard["panels"], path.name)
        for var in dashboard.get("templating", {}).get("list", []):
            if isinstance(var.get("definition"), str):
                found.setdefault(f"{path.name}: ${var['name']}", []).append(var["definition"])
    return found


def metric_names(exprs: dict[str, list[str]]) -> dict[str, set[str]]:
    """Metric name -> the places that use it."""
    names: dict[str, set[str]] = {}
    for where, texts in exprs.items():
        for text in texts:
            for name in METRIC_NAME.findall(text):
                names.setdefault(name, set()).add(where)
    return names


def exported_names(exposition: str) -> set[str]:
    """Family and sample names in a Prometheus text exposition (families may have no samples)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def is_exported(name: str, exported: set[str]) -> bool:
    if name in exported:
        return True
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in exported:
            return True
    return False


SecretRef = tuple[str, str | None]
"""(Secret name, key); key None: the whole Secret (a volume or envFrom)."""


def secret_refs(spec: dict[str, Any]) -> set[SecretRef]:
    """Every Secret a pod spec reads: env secretKeyRef, envFrom secretRef, secret volumes
    (projected ones included)."""
    refs: set[SecretRef] = set()
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
        for source in c.get("envFrom", []):
            if "secretRef" in source:
                refs.add((source["secretRef"]["name"], None))
    for v in spec.get("volumes", []):
        if "secret" in v:
            refs.add((v["secret"]["secretName"], None))
        for source in v.get("projected", {}).get("sources", []):
            if "secret" in source:
                refs.add((source["secret"]["name"], None))
    return refs


def values_of(*files: Path) -> dict[str, Any]:
    """The chart's values.yaml with `files` merged over it, as helm merges maps (lists replace)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in files:
        values = merge(values, yaml.safe_load(f.read_text()) or {})
    return values
