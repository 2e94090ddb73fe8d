"""The prepared one-shot GPU check (issue #17): run by `bench/gpu_check.sh`.

    python -m bench.gpu_check [--device auto|cuda|cpu] [--out DIR] [--no-vllm]

Reports what the machine has (GPU, Python, packages), whether `import vllm` works (and, if
it does, a vLLM smoke test on the tiny checkpoint in a child process), then the transformers
engine through a real in-process worker on a tiny random Llama written at run time (nothing
to download): load, stream, cancel mid-stream, the batching ratio at 1 vs 8 streams, and the
memory budget (the worker's figure vs what the device holds; a budget too small refused with
RESOURCE_EXHAUSTED). Each check is PASS, FAIL or SKIPPED (with the reason). The markdown
report goes to DIR/gpu_check.md ($OUT when set, else bench/results/), rewritten after every
check so a run cut short still leaves what it found. `--device cpu` is the CPU dry run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import gpu_env
from bench.gpu_report import Check, failed, markdown, passed, skipped

RESULTS = Path(__file__).parent / "results"


class Run:
    """The checks so far, and the report rewritten after each."""

    def __init__(self, out: Path, title: str, environment: list[str]) -> None:
        self.path, self.title, self.environment = out / "gpu_check.md", title, environment
        self.checks: list[Check] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, *checks: Check) -> None:
        for check in checks:
            self.checks.append(check)
            print(check.line(), flush=True)
        self.path.write_text(markdown(self.title, self.environment, self.checks))


def _device(wanted: str) -> tuple[str, str]:
    """(device to run on, the report's title)."""
    have = gpu_env.torch_device()
    if wanted == "cpu":
        return "cpu", "GPU check: CPU dry run"
    if have == "cuda":
        return "cuda", "GPU check: CUDA"
    if wanted == "cuda":
        return "none", f"GPU check: CUDA requested, torch sees none ({have})"
    return ("cpu" if have == "cpu" else "none"), "GPU check: CPU dry run (no CUDA device for torch)"


def _vllm_checks(run: Run, checkpoint: Path | None, args: argparse.Namespace) -> None:
    probe = gpu_env.probe_vllm()
    if probe.error:
        run.add(skipped("vllm import", probe.error))
        run.add(skipped("vllm smoke", "vllm does not import here"))
        return
    run.add(passed("vllm import", f"vllm {probe.version}, platform {probe.platform}"))
    if args.no_vllm:
        run.add(skipped("vllm smoke", "--no-vllm"))
        return
    if checkpoint is None:
        run.add(skipped("vllm smoke", "no tiny checkpoint (needs torch + transformers)"))
        return
    rc, out = gpu_env.vllm_smoke(checkpoint, args.vllm_timeout)
    result = _last_json(out)
    detail = json.dumps(result) if result else out[-400:]
    run.add(passed("vllm smoke (tiny model)", detail) if rc == 0 else failed("vllm smoke", detail))


def _last_json(out: str) -> dict[str, object]:
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except ValueError:
                continue
            return found if isinstance(found, dict) else {}
    return {}


def _checkpoint(run: Run, root: Path) -> tuple[Path, int] | None:
    try:
        from bench.gpu_tiny import write_tiny_llama

        started = time.perf_counter()
        path, params = write_tiny_llama(root / "tiny-llama")
    except Exception as err:
        run.add(failed("tiny checkpoint", f"{type(err).__name__}: {err}"))
        return None
    took = time.perf_counter() - started
    run.add(passed("tiny checkpoint", f"{params / 1e6:.1f}M-parameter Llama in {took:.1f} s"))
    return path, params


def _worker_checks(run: Run, tiny: tuple[Path, int], device: str, args: argparse.Namespace) -> None:
    try:
        from bench.gpu_worker import Plan, run_worker_checks

        plan = Plan(
            tiny[0],
            tiny[1],
            device,
            tiny[0].parent,
            tokens=args.tokens,
            streams=args.streams,
            threads=args.threads,
        )
        for check in asyncio.run(run_worker_checks(plan)):
            run.add(check)
    except Exception as err:
        logging.exception("worker checks")
        run.add(failed("worker checks", f"{type(err).__name__}: {err}"))


def check(args: argparse.Namespace) -> int:
    device, title = _device(args.device)
    environment = gpu_env.report_lines()
    print("\n".join(environment), flush=True)
    run = Run(args.out, title, environment)
    run.add(passed("environment", f"torch device: {gpu_env.torch_device()}; running on {device}"))
    missing = gpu_env.missing_modules()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        can_build = "torch" not in missing and "transformers" not in missing
        tiny = _checkpoint(run, Path(tmp)) if can_build else None
        if not can_build:
            run.add(skipped("tiny checkpoint", "needs torch and transformers"))
        _vllm_checks(run, tiny[0] if tiny else None, args)
        if gpu_env.python_too_old():
            run.add(skipped("transformers engine through a worker", "modelyard needs Python 3.11"))
        elif missing or tiny is None or device == "none":
            reason = f"missing {', '.join(missing)}" if missing else f"device {device}"
            run.add(skipped("transformers engine through a worker", reason))
        else:
            _worker_checks(run, tiny, device, args)
    print(f"report: {run.path}", flush=True)
    return 1 if any(c.status == "FAIL" for c in run.checks) else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--out", type=Path, default=default_out, help="where gpu_check.md goes")
    p.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    p.add_argument("--streams", type=int, default=8, help="concurrent streams for batching")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--no-vllm", action="store_true", help="skip the vLLM smoke test")
    p.add_argument("--vllm-timeout", type=float, default=240.0, help="seconds for vLLM")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # No network on the check's machine, and no progress bars in its log.
    for key in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(check(parse(argv)))


if __name__ == "__main__":
    main()
