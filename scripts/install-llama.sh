#!/usr/bin/env bash
# Install the pinned llama-cpp-python into the venv given (scripts/setup.sh: .venv,
# scripts/setup-vllm.sh: .venv-vllm), built from source once per build flags and CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:?usage: install-llama.sh VENV}"
# LLAVA_BUILD=OFF skips llama.cpp's multimodal library, which modelyard does not use.
# llama.cpp builds for this CPU (-march=native), except AMX: a CPU may report AMX that its
# VM does not let a process use (SIGILL in libggml-cpu on the first large batch).
LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF"
CPU_FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
case "$CPU_FLAGS" in
  *" amx_tile "*)
    no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
    ;;
esac
LLAMA_CMAKE_ARGS="${CMAKE_ARGS:-$LLAMA_CMAKE_ARGS}"
# pip's wheel cache ignores CMAKE_ARGS and the CPU: a cache of its own per build flags and
# CPU, so a wheel built otherwise (another CPU, an older setup) is never reused.
LLAMA_KEY="$LLAMA_CMAKE_ARGS $CPU_FLAGS"
LLAMA_HASH="$("$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:12])' "$LLAMA_KEY")"
LLAMA_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/modelyard/llama-cpp-$LLAMA_HASH"
LLAMA_PIN="$(sed -n 's/^llamacpp = \["\(llama-cpp-python==[^"]*\)".*/\1/p' pyproject.toml)"
if [ -z "$LLAMA_PIN" ]; then
  echo "install-llama.sh: no llama-cpp-python pin found in pyproject.toml" >&2
  exit 1
fi
if [ "$(cat "$VENV/.llama-build" 2>/dev/null)" != "$LLAMA_PIN $LLAMA_KEY" ]; then
  echo "==> installing $LLAMA_PIN (builds from source once per flags: ~6 min)"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$VENV/bin/pip" install --disable-pip-version-check \
    --progress-bar off -q --force-reinstall --no-deps --cache-dir "$LLAMA_CACHE" "$LLAMA_PIN"
  printf '%s' "$LLAMA_PIN $LLAMA_KEY" > "$VENV/.llama-build"
fi
