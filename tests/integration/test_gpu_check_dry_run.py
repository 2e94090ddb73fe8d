"""The prepared GPU check (bench/gpu_check.sh) in its CPU dry run: every check of the
transformers engine through a worker passes on the tiny model, and the report says so.

Needs torch + transformers: runs under .venv-vllm (scripts/test.sh's VLLM_TESTS).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
WORKER_CHECKS = (
    "tiny checkpoint",
    "load",
    "stream",
    "cancel mid-stream",
    "batching ratio",
    "memory: reported vs held",
    "memory: budget too small refused",
)


def test_the_cpu_dry_run_passes_every_worker_check(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--no-vllm"]
    argv += ["--out", str(tmp_path), "--tokens", "16", "--streams", "4"]
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in WORKER_CHECKS:
        assert any(line.startswith(f"PASS    {name}:") for line in lines), (name, done.stdout)
    assert any(line.startswith("SKIPPED vllm smoke: ") for line in lines), done.stdout
    report = (tmp_path / "gpu_check.md").read_text()
    assert report.startswith("# GPU check: CPU dry run\n")
    assert "| stream | PASS | 16 token ids" in report and "0 failed" in report
    assert "## Environment" in report and "python: " in report
