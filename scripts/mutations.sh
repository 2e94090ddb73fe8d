#!/usr/bin/env bash
# The mutation check: break each important behaviour on purpose (tests/mutations/breakers.py)
# and fail unless the tests named for it catch the break. Run by scripts/test.sh.
#   bash scripts/mutations.sh                  every breaker
#   bash scripts/mutations.sh consul-polling   only those named
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m tests.mutations "$@"
