"""Validate rendered chart manifests that kubernetes-validate cannot: the custom resources.

`python -m tests.ops.crcheck --kubernetes-version 1.35.0 FILE...` reads multi-document YAML and
checks every ScaledObject, ServiceMonitor, PrometheusRule and Certificate against the JSON
Schemas kept in charts/schemas (derived from the projects' CRDs). Any other kind must have a
schema in kubernetes-validate for that Kubernetes version; a kind that has neither fails, so a
typo in an apiVersion cannot slip through as a mere warning.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "charts" / "schemas"

# (apiVersion, kind) -> schema file in charts/schemas.
CUSTOM_RESOURCES: Mapping[tuple[str, str], str] = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
    ("cert-manager.io/v1", "Certificate"): "certificate-cert-manager-v1.json",
}


def documents(texts: Iterable[str]) -> Iterator[dict[str, Any]]:
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if doc:
                if not isinstance(doc, dict):
                    raise ValueError(f"a manifest is not a mapping: {doc!r:.80}")
                yield doc


def load_schema(api_version: str, kind: str) -> dict[str, Any]:
    path = SCHEMA_DIR / CUSTOM_RESOURCES[(api_version, kind)]
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def check(doc: Mapping[str, Any], kubernetes_version: str) -> list[str]:
    """Problems with one manifest; empty when it is valid."""
    api_version, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
    name = f"{kind}/{doc.get('metadata', {}).get('name', '?')}"
    if (api_version, kind) in CUSTOM_RESOURCES:
        validator = jsonschema.Draft202012Validator(load_schema(api_version, kind))
        return [
            f"{name}: {'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        ]
    from kubernetes_validate import utils as kv  # type: ignore[import-untyped]

    try:
        kv.validate(dict(doc), kubernetes_version, True)
    except kv.SchemaNotFoundError:
        return [
            f"{name}: {api_version} {kind} is neither a Kubernetes {kubernetes_version} kind "
            "nor a custom resource with a schema in charts/schemas"
        ]
    except kv.ValidationError as err:
        return [f"{name}: {err.message}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("files", nargs="+", help="rendered manifests; - for stdin")
    args = parser.parse_args(argv)
    texts = [sys.stdin.read() if f == "-" else Path(f).read_text() for f in args.files]
    problems: list[str] = []
    counts: dict[str, int] = {}
    for doc in documents(texts):
        problems += check(doc, args.kubernetes_version)
        counts[str(doc.get("kind"))] = counts.get(str(doc.get("kind")), 0) + 1
    for problem in problems:
        print(f"ERROR {problem}", file=sys.stderr)
    custom = sum(counts.get(kind, 0) for _, kind in CUSTOM_RESOURCES)
    print(
        f"crcheck: {sum(counts.values())} manifests, {custom} custom resources, "
        f"{len(problems)} problems"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
