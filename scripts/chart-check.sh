#!/usr/bin/env bash
# Check the Helm chart with the real helm binary: lint --strict, then render every value set in
# charts/modelyard/ci/ and validate the manifests offline against a pinned Kubernetes version
# (kubernetes-validate --strict) and the custom resources against charts/schemas (jsonschema).
# RENDER_DIR=dir keeps the rendered manifests (one file per value set) for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="1.35.0"
CHART="charts/modelyard"
PYTHON="${PYTHON:-.venv/bin/python}"
HELM="$(bash scripts/helm.sh)"
if [ -n "${RENDER_DIR:-}" ]; then
  OUT="$RENDER_DIR"
  mkdir -p "$OUT"
else
  OUT="$(mktemp -d)"
  trap 'rm -rf "$OUT"' EXIT
fi

echo "==> helm lint --strict $CHART (defaults)"
"$HELM" lint --strict "$CHART"

n=0
for values in "$CHART"/ci/*-values.yaml; do
  set_name="$(basename "$values" -values.yaml)"
  rendered="$OUT/$set_name.yaml"
  echo "==> $set_name: helm lint --strict, helm template, kubernetes-validate $K8S_VERSION, CR schemas"
  "$HELM" lint --strict "$CHART" -f "$values" >/dev/null
  "$HELM" template modelyard "$CHART" --namespace modelyard -f "$values" \
    | tee "$rendered" | "$PYTHON" -m kubernetes_validate --strict --quiet -k "$K8S_VERSION" -
  "$PYTHON" -m tests.ops.crcheck --kubernetes-version "$K8S_VERSION" "$rendered"
  n=$((n + 1))
done
if [ "$n" -lt 3 ]; then
  echo "chart-check: only $n value sets in $CHART/ci; at least 3 expected" >&2
  exit 1
fi
echo "chart-check: $n value sets rendered and valid (Kubernetes $K8S_VERSION)"
