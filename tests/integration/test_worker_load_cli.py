"""`modelyard models load|unload` against the real mesh (registry + worker + router)."""

from __future__ import annotations

import grpc
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.local_mesh import LocalMesh
from modelyard.v1 import model_pb2, worker_pb2, worker_pb2_grpc


def state_of(worker: str, model: model_pb2.Model) -> int:
    with grpc.insecure_channel(worker) as channel:
        status = worker_pb2_grpc.WorkerServiceStub(channel).GetStatus(
            worker_pb2.GetStatusRequest(), timeout=10
        )
    for m in status.status.models:
        if (m.name, m.version) == (model.name, model.version):
            return int(m.state)
    return worker_pb2.RESIDENCY_STATE_COLD


def test_load_and_unload_a_registered_model_on_a_worker(
    mesh: LocalMesh, smollm2: model_pb2.Model
) -> None:
    runner = CliRunner()
    worker = mesh.worker_addresses[0]
    ref = f"{smollm2.name}@{smollm2.version}"
    where = ["--worker", worker]

    result = runner.invoke(
        app, ["models", "load", ref, *where, "--registry", mesh.registry_address]
    )
    assert result.exit_code == 0, result.output
    assert ref in result.output and ("loaded" in result.output or "already warm" in result.output)
    assert state_of(worker, smollm2) == worker_pb2.RESIDENCY_STATE_WARM

    result = runner.invoke(app, ["models", "unload", smollm2.name, *where, "--grace", "5"])
    assert result.exit_code == 0, result.output
    assert f"unloaded {ref}" in result.output
    assert state_of(worker, smollm2) == worker_pb2.RESIDENCY_STATE_COLD

    result = runner.invoke(
        app, ["models", "load", smollm2.name, *where, "--registry", mesh.registry_address, "--pin"]
    )
    assert result.exit_code == 0, result.output
    assert f"loaded {ref}" in result.output and "pinned" in result.output

    result = runner.invoke(app, ["models", "unload", "no-such-model", *where])
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.output
