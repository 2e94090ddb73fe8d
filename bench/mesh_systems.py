"""What the mesh bench runs side by side: the instant OpenAI backend, modelyard on sim
workers that stream at once, and the peers a user would pick instead (vllm-router and the
LiteLLM proxy, each installed from PyPI into its own venv under bench/.venvs)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc

from modelyard.local_mesh import free_port
from tests.robustness.sim_mesh import CLIENT_KEY, SimMesh, start_sim_mesh

VENVS = Path(__file__).parent / ".venvs"
PEERS = {  # venv name -> what pip installs there (pinned where the issue measured them)
    "vllm-router": ["vllm-router==0.1.17"],
    "litellm": ["litellm[proxy]"],
}
GRPC_FLOOR = "grpc.aio byte relay (floor)"
# Tokens come out as fast as the sim engine can make them: the router's cost shows.
INSTANT = {
    "sim_decode_ms_per_token": "0",
    "sim_prefill_ms_per_token": "0",
    "sim_eos_probability": "0",
    "sim_memory_bytes": str(1 << 30),
}


@dataclass
class System:
    """One thing under test: where clients call it and whose CPU it costs."""

    name: str
    kind: str  # "http", "grpc" (RouterService.Generate) or "direct" (PickWorker, then the worker)
    address: str
    model: str
    pid: int  # the root of the router's process tree (0: nothing to account)
    api_key: str = ""


def ensure_venv(name: str) -> Path:
    """The peer's venv, created and filled from PyPI on first use."""
    venv = VENVS / name
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    marker = venv / ".installed"
    if not marker.exists():
        pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, *PEERS[name]], check=True)
        marker.write_text(" ".join(PEERS[name]) + "\n")
    return venv


def wait_http(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status < 500:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.25)


def spawn(stack: ExitStack, args: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    out = log.open("wb")
    stack.callback(out.close)
    process = subprocess.Popen(
        args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )

    def stop() -> None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    stack.callback(stop)
    return process.pid


def start_backend(stack: ExitStack, work: Path) -> System:
    port = free_port()
    args = [sys.executable, "-m", "bench.instant_backend", "--port", str(port)]
    pid = spawn(stack, args, work / "backend.log")
    wait_http(f"http://127.0.0.1:{port}/health")
    return System("backend (direct)", "http", f"127.0.0.1:{port}", "instant", pid)


def start_vllm_router(stack: ExitStack, work: Path, backend: System) -> System:
    venv = ensure_venv("vllm-router")
    port = free_port()
    args = [
        str(venv / "bin" / "vllm-router"),
        "--worker-urls", f"http://{backend.address}",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--policy", "round_robin",
    ]  # fmt: skip
    pid = spawn(stack, args, work / "vllm-router.log")
    wait_http(f"http://127.0.0.1:{port}/v1/models")
    return System("vllm-router", "http", f"127.0.0.1:{port}", "instant", pid)


def start_litellm(stack: ExitStack, work: Path, backend: System) -> System:
    venv = ensure_venv("litellm")
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: instant\n"
        "    litellm_params:\n"
        "      model: openai/instant\n"
        f"      api_base: http://{backend.address}/v1\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    port = free_port()
    args = [
        str(venv / "bin" / "litellm"),
        "--config", str(config),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--num_workers", "1",
    ]  # fmt: skip
    # The proxy refuses to start without a master key (every request must carry it).
    key = f"sk-bench-{secrets.token_hex(16)}"
    env = {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "LITELLM_MASTER_KEY": key}
    pid = spawn(stack, args, work / "litellm.log", env)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout_s=240)
    return System("LiteLLM proxy", "http", f"127.0.0.1:{port}", "instant", pid, key)


def start_grpc_relay(stack: ExitStack, work: Path, worker: str) -> System:
    """The floor: a bare grpc.aio byte relay in front of the mesh's worker."""
    port = free_port()
    args = [sys.executable, "-m", "bench.grpc_relay", "--port", str(port), "--worker", worker]
    pid = spawn(stack, args, work / "grpc-relay.log")
    address = f"127.0.0.1:{port}"
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
    return System(GRPC_FLOOR, "worker", address, "instant", pid)


def start_modelyard(stack: ExitStack, work: Path) -> tuple[list[System], SimMesh]:
    """The gRPC path, the OpenAI front and direct streams of one router over one instant
    sim worker (the mesh has a ticket key and reporter token for the direct streams)."""
    (work / "mesh").mkdir()
    mesh = start_sim_mesh(work / "mesh", ("instant",), extra=INSTANT, http=True, direct=True)
    stack.callback(mesh.stop)
    router_pid = mesh.local.service("router").process.pid
    http = mesh.local.router_http_address
    assert http is not None
    grpc_path = System(
        "modelyard gRPC", "grpc", mesh.local.router_address, "instant", router_pid, CLIENT_KEY
    )
    front = System("modelyard OpenAI front", "http", http, "instant", router_pid, CLIENT_KEY)
    # The router picks and signs a ticket; tokens come from the worker; its outcome report
    # goes back to the router: all of the router's part is in its process tree's CPU.
    direct = System(
        "modelyard direct", "direct", mesh.local.router_address, "instant", router_pid, CLIENT_KEY
    )
    return [grpc_path, front, direct], mesh
