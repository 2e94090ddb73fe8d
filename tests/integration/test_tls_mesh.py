"""The whole mesh over mTLS with API keys on both hops: a generation through the SDK on SmolLM2.

Clients need a router API key; the worker needs its own API key, which the router sends.
Each refusal sits beside the same call succeeding, so none can pass by mere unreachability.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from modelyard.bundled import smollm2_model
from modelyard.client import Client
from modelyard.errors import PermissionDenied, Unauthenticated
from modelyard.local_mesh import LocalMesh
from modelyard.v1 import registry_pb2, registry_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.tls_certs import CertFiles, TestCA

pytestmark = pytest.mark.integration

API_KEY = "test-key-1"
WORKER_KEY = "router-to-worker-key"


def tls(ca: TestCA, files: CertFiles) -> dict[str, Any]:
    return {
        "tls_ca_file": str(ca.ca_file),
        "tls_cert_file": str(files.cert),
        "tls_key_file": str(files.key),
    }


def test_generation_over_mtls_with_an_api_key(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "tls")
    env: dict[str, str] = {
        "MODELYARD_ROUTER_API_KEYS": f"other,{API_KEY}",
        "MODELYARD_WORKER_API_KEY": WORKER_KEY,
        "MODELYARD_ROUTER_WORKER_API_KEY": WORKER_KEY,
    }
    for service in ("registry", "worker", "router"):
        env |= ca.env(service, ca.issue(service), mtls=True)
    mesh = LocalMesh(data_dir=tmp_path / "mesh", worker_threads=2, env=env)
    mesh.start()  # health polling speaks mTLS with each service's own certificate
    try:
        client_files = ca.issue("client")
        credentials = grpc.ssl_channel_credentials(
            ca.ca_file.read_bytes(), client_files.key.read_bytes(), client_files.cert.read_bytes()
        )
        with grpc.secure_channel(mesh.registry_address, credentials) as channel:
            registry_pb2_grpc.RegistryServiceStub(channel).RegisterModel(
                registry_pb2.RegisterModelRequest(model=smollm2_model()), timeout=30
            )
        with (
            Client(mesh.router_address, timeout_s=120, **tls(ca, client_files)) as anonymous,
            pytest.raises(Unauthenticated),
        ):
            anonymous.list_models()
        with (
            Client(
                mesh.router_address, timeout_s=120, api_key="test-key-2", **tls(ca, client_files)
            ) as guessing,
            pytest.raises(PermissionDenied),
        ):
            guessing.list_models()
        with Client(
            mesh.router_address, timeout_s=120, api_key=API_KEY, **tls(ca, client_files)
        ) as client:
            model = smollm2_model()
            reply = client.complete(
                model=f"{model.name}@{model.version}", prompt="Hi", max_tokens=4
            )
            assert reply.finished.usage.output_tokens > 0
        # The router reached the worker, so it sent the worker's key: without it, refused.
        with grpc.secure_channel(mesh.worker_addresses[0], credentials) as channel:
            worker = worker_pb2_grpc.WorkerServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                worker.GetStatus(worker_pb2.GetStatusRequest(), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            status = worker.GetStatus(
                worker_pb2.GetStatusRequest(),
                timeout=30,
                metadata=(("authorization", f"Bearer {WORKER_KEY}"),),
            )
            assert status.status.worker_id
    finally:
        mesh.stop()
