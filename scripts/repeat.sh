#!/usr/bin/env bash
# Run the main test stage N times in a row, each in a fresh random order, and stop at the
# first failing run (the point is to find flakes and order dependence, not to retry them).
#
#   bash scripts/repeat.sh 10            # logs in .repeat/run-<i>.log, seeds in .repeat/summary
#   bash scripts/repeat.sh 1 global      # one run with every test shuffled across modules
#
# The second argument is pytest-random-order's bucket. `module` (the default) shuffles the
# modules and the tests inside each, so module-scoped fixtures (a loaded model, a mesh)
# are built once per module and a run takes as long as CI's. `global` interleaves tests of
# different modules too: it rebuilds those fixtures again and again (about 3x slower).
#
# Expects scripts/test.sh to have set up .venv and PostgreSQL once before (it runs the same
# pytest stage with the same flags, in file order). The vLLM venv's tests are left out: they
# have their own stage in scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
bucket="${2:-module}"
export CI=true
source scripts/pytest_ci.sh
export PATH="$PWD/.venv/bin:$PATH"
postgres_url="$(bash scripts/postgres.sh)"
export MODELYARD_TEST_POSTGRES_URL="$postgres_url"
out=.repeat
mkdir -p "$out"
: > "$out/summary"
for i in $(seq 1 "$runs"); do
  seed=$RANDOM$RANDOM
  start=$(date +%s)
  status=0
  pytest "${PYTEST_CI[@]}" "${VLLM_TESTS[@]/#/--ignore=}" \
    --random-order-bucket="$bucket" --random-order-seed="$seed" \
    >"$out/run-$i.log" 2>&1 || status=$?
  line="run $i bucket $bucket seed $seed status $status $(( $(date +%s) - start ))s $(tail -n 1 "$out/run-$i.log")"
  echo "$line" | tee -a "$out/summary"
  if [ "$status" -ne 0 ]; then
    exit "$status"
  fi
done
echo "all $runs runs passed" | tee -a "$out/summary"
