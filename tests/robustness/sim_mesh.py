"""A real mesh on the sim engine for the robustness suite and its benches.

Registry (SQLite), one worker offering the `sim` engine and a router, each its own
process on loopback (so each one's RSS and open files can be read from /proc), with a
token per role as a deployment has them. Sim models are registered with a known
latency model, so load is the mesh's, not a model's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from modelyard.bearer import bearer_metadata
from modelyard.local_mesh import LocalMesh
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from tests.sim_models import sim_model as shared_sim_model

GiB = 1 << 30
ADMIN_TOKEN = "robust-registry-admin"
ROUTER_READS = "robust-router-reader"
WORKER_READS = "robust-worker-reader"
OPERATOR_TOKEN = "robust-worker-operator"
ROUTER_TO_WORKER = "robust-router-to-worker"
CLIENT_KEY = "robust-client-key"
OUTCOME_WRITER = "robust-outcome-writer"

# Fast and deterministic: no early end of sequence, 1 ms a token.
FAST: Mapping[str, str] = {
    "sim_decode_ms_per_token": "1",
    "sim_prefill_ms_per_token": "0.01",
    "sim_eos_probability": "0",
    "sim_memory_bytes": str(GiB),
}


def sim_model(artifact: Path, name: str, extra: Mapping[str, str] = FAST) -> model_pb2.Model:
    return shared_sim_model(artifact, name, extra=extra, context_length=1024)


def mesh_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A token per role, the sim engine on, and a small worker memory budget."""
    return {
        "MODELYARD_REGISTRY_ADMIN_TOKEN": ADMIN_TOKEN,
        "MODELYARD_REGISTRY_READER_TOKENS": f"router:{ROUTER_READS},worker:{WORKER_READS}",
        "MODELYARD_WORKER_ADMIN_TOKEN": OPERATOR_TOKEN,
        "MODELYARD_WORKER_API_KEY": ROUTER_TO_WORKER,
        "MODELYARD_WORKER_REGISTRY_TOKEN": WORKER_READS,
        "MODELYARD_WORKER_SIM_ENGINE": "true",
        # One router: an unknown request id is NOT_FOUND at once (the fuzz sends many).
        "MODELYARD_ROUTER_OUTCOME_FEEDBACK_WAIT_S": "0",
        "MODELYARD_WORKER_MEMORY_BUDGET_BYTES": str(4 * GiB),
        "MODELYARD_ROUTER_API_KEYS": f"app:{CLIENT_KEY}",
        "MODELYARD_ROUTER_REGISTRY_TOKEN": ROUTER_READS,
        "MODELYARD_ROUTER_WORKER_API_KEY": ROUTER_TO_WORKER,
        "MODELYARD_REGISTRY_OUTCOME_WRITER_TOKENS": f"router:{OUTCOME_WRITER}",
        "MODELYARD_ROUTER_OUTCOME_TOKEN": OUTCOME_WRITER,
        **(extra or {}),
    }


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid`, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class SimMesh:
    """A started mesh and the sim models registered in it."""

    local: LocalMesh
    models: list[model_pb2.Model] = field(default_factory=list)

    @property
    def model(self) -> model_pb2.Model:
        return self.models[0]

    def pids(self) -> dict[str, int]:
        return {s.name: s.process.pid for s in self.local.services}

    def rss(self) -> dict[str, int]:
        return {name: rss_bytes(pid) for name, pid in self.pids().items()}

    def fds(self) -> dict[str, int]:
        return {name: open_fds(pid) for name, pid in self.pids().items()}

    def alive(self) -> list[str]:
        """Names of the services whose process has exited (none, when all is well)."""
        return [s.name for s in self.local.services if s.process.poll() is not None]

    def stop(self) -> None:
        self.local.stop()


def start_sim_mesh(
    data_dir: Path,
    names: Sequence[str] = ("sim-a",),
    *,
    env: Mapping[str, str] | None = None,
    extra: Mapping[str, str] = FAST,
    http: bool = False,
    direct: bool = False,
    workers: int = 1,
) -> SimMesh:
    """Start the mesh, register `names` as sim models and wait until the router serves
    the first of them end to end. `direct`: with direct streams (LocalMesh.direct_streams)."""
    artifact = data_dir / "sim.bin"
    artifact.write_bytes(b"a simulated model: any small file will do\n")
    local = LocalMesh(
        data_dir=data_dir,
        env=mesh_env(env),
        router_http_port=0 if http else None,
        direct_streams=direct,
        worker_ports=(0,) * workers,
    )
    local.start()
    mesh = SimMesh(local, [sim_model(artifact, name, extra) for name in names])
    try:
        with grpc.insecure_channel(local.registry_address) as channel:
            registry = registry_pb2_grpc.RegistryServiceStub(channel)
            for model in mesh.models:
                registry.RegisterModel(
                    registry_pb2.RegisterModelRequest(model=model),
                    timeout=30,
                    metadata=bearer_metadata(ADMIN_TOKEN),
                )
        wait_served(local.router_address, mesh.model.name)
    except BaseException:
        local.stop()
        raise
    return mesh


def wait_served(router_address: str, model: str, timeout_s: float = 60.0) -> None:
    """Poll until one generation through the router finishes (the router learns the
    registry's models and the worker's status asynchronously)."""
    deadline = time.monotonic() + timeout_s
    request = router_pb2.GenerateRequest(
        model=model, prompt="warm up", sampling=common_pb2.SamplingParams(max_tokens=2)
    )
    last: Exception | None = None
    with grpc.insecure_channel(router_address) as channel:
        router = router_pb2_grpc.RouterServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                router.Complete(
                    router_pb2.CompleteRequest.FromString(request.SerializeToString()),
                    timeout=10,
                    metadata=bearer_metadata(CLIENT_KEY),
                )
                return
            except grpc.RpcError as err:
                last = err
                time.sleep(0.2)
    raise AssertionError(f"the router did not serve {model} in {timeout_s:.0f} s: {last}")
