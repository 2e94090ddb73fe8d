#!/usr/bin/env bash
# The prepared one-shot GPU check (issue #17). Run it from anywhere on a machine with a GPU:
#
#   bash bench/gpu_check.sh                  # report in $OUT/gpu_check.md, else bench/results/
#   bash bench/gpu_check.sh --device cpu     # the CPU dry run (any machine)
#   PYTHON=.venv-vllm/bin/python bash bench/gpu_check.sh --no-vllm
#
# Nothing is installed and nothing downloaded (such a machine may have no network): it
# reports what the machine has (nvidia-smi, Python, the packages that matter), then
# `python -m bench.gpu_check` runs what those packages allow and marks each check PASS,
# FAIL or SKIPPED (with the reason). The whole run is bounded by GPU_CHECK_BUDGET_S
# (default 470 s); the report is rewritten after every check, so a run cut short keeps
# what it found. Extra arguments go to the driver (see `python -m bench.gpu_check -h`).
set -u

cd "$(dirname "$0")/.."
BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-bench/results}"
mkdir -p "$OUT_DIR"
# The log travels back with the report when $OUT is set; locally the terminal has it.
LOG=/dev/null
if [ -n "${OUT:-}" ]; then LOG="$OUT_DIR/gpu_check.log"; fi

{
  echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) bench/gpu_check.sh, budget ${BUDGET_S}s"
  echo "== nvidia-smi"
  timeout 30 nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  echo "== python: $PY"
  "$PY" --version 2>&1 || { echo "no $PY: nothing to run"; exit 3; }
  echo "== pip list (excerpt)"
  timeout 60 "$PY" -m pip list 2>/dev/null |
    grep -iE '^(torch|transformers|tokenizers|safetensors|accelerate|vllm|grpcio|protobuf|pydantic|xgrammar)[- ]' ||
    echo "(pip list unavailable or none of those packages)"
} 2>&1 | tee "$LOG"
[ "${PIPESTATUS[0]}" = 3 ] && exit 3

echo "== python -m bench.gpu_check $*" | tee -a "$LOG"
timeout -k 10 "$BUDGET_S" env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
  "$PY" -m bench.gpu_check --out "$OUT_DIR" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  note="TIMEOUT: the driver ran past ${BUDGET_S}s; the checks above are those it finished."
  echo "$note" | tee -a "$LOG"
  [ -f "$OUT_DIR/gpu_check.md" ] && printf '\n%s\n' "$note" >>"$OUT_DIR/gpu_check.md"
fi
echo "== exit $rc (0: no FAIL; 1: a check failed; 124: out of time)" | tee -a "$LOG"
exit "$rc"
