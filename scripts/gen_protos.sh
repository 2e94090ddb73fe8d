#!/usr/bin/env bash
# Regenerate the Python stubs (and their .pyi type stubs) from protos/.
# CI runs this and fails if the committed files change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
bindir="$(cd "$(dirname "$PY")" && pwd)"  # assigned apart: `export X="$(...)"` hides a failure
export PATH="$bindir:$PATH"
OUT=modelyard/v1
rm -f "$OUT"/*_pb2.py "$OUT"/*_pb2.pyi "$OUT"/*_pb2_grpc.py "$OUT"/*_pb2_grpc.pyi
"$PY" -m grpc_tools.protoc \
  -I protos \
  --python_out=. \
  --grpc_python_out=. \
  --mypy_out=quiet:. \
  --mypy_grpc_out=quiet:. \
  protos/modelyard/v1/*.proto
echo "generated: $(ls "$OUT" | grep -c _pb2) files in $OUT"
