"""`modelyard up`: the README's first command, end to end, as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path


def _processes_with(marker: str) -> list[int]:
    """Pids whose environment carries marker: the services `up` started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _up(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    marker = f"MODELYARD_E2E_MARKER={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1], "COLUMNS": "200"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelyard",
            "up",
            "--base-port",
            "0",
            "--data-dir",
            str(tmp_path),
            "--threads",
            "2",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    return process, marker


def test_up_once_streams_an_answer_and_leaves_nothing_running(tmp_path: Path) -> None:
    process, marker = _up(
        tmp_path, "--once", "--max-tokens", "32", "--prompt", "What is the capital of France?"
    )
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output
    assert "smollm2-135m-instruct" in output
    assert "Paris" in output, output
    assert "all services stopped" in output
    assert _processes_with(marker) == []
    for name in ("registry", "worker-0", "router"):
        assert (tmp_path / "logs" / f"{name}.log").exists()


def test_ctrl_c_stops_every_service(tmp_path: Path) -> None:
    process, marker = _up(tmp_path, "--prompt", "")
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 180
    for line in process.stdout:
        lines.append(line)
        if "Serving." in line or time.monotonic() > deadline:
            break
    assert any("Serving." in line for line in lines), "".join(lines)
    assert len(_processes_with(marker)) == 4  # up + registry + worker + router
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, "".join(lines) + rest
    assert "all services stopped" in rest
    assert _processes_with(marker) == []
