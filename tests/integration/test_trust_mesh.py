"""The whole mesh with every guard on: mTLS with one identity per service, one token per
role, named client keys. A generation streams end to end (the worker resolving SmolLM2
through the registry with its own reader credentials), and every call a role may not make
is refused with UNAUTHENTICATED or PERMISSION_DENIED naming what is missing.

Each refusal sits beside the same kind of call succeeding with the right credentials, so
none passes by mere unreachability.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from modelyard.bearer import bearer_metadata
from modelyard.bundled import smollm2_model
from modelyard.client import Client
from modelyard.errors import PermissionDenied, Unauthenticated
from modelyard.local_mesh import LocalMesh
from modelyard.refs import key_of
from modelyard.v1 import registry_pb2, registry_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.tls_certs import CertFiles, TestCA

pytestmark = pytest.mark.integration

ID = "spiffe://modelyard/{}".format
ADMIN_TOKEN = "registry-admin-token"
ROUTER_READS = "router-reader-token"
WORKER_READS = "worker-reader-token"
OPERATOR_TOKEN = "worker-operator-token"
ROUTER_TO_WORKER = "router-to-worker-key"
CLIENT_KEY = "client-key-app"


class Mesh:
    def __init__(self, mesh: LocalMesh, ca: TestCA, certs: dict[str, CertFiles]) -> None:
        self.mesh, self.ca, self.certs = mesh, ca, certs

    def channel(self, address: str, who: str) -> grpc.Channel:
        files = self.certs[who]
        credentials = grpc.ssl_channel_credentials(
            self.ca.ca_file.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
        )
        return grpc.secure_channel(address, credentials)

    def registry(self, who: str) -> tuple[grpc.Channel, registry_pb2_grpc.RegistryServiceStub]:
        channel = self.channel(self.mesh.registry_address, who)
        return channel, registry_pb2_grpc.RegistryServiceStub(channel)

    def worker(self, who: str) -> tuple[grpc.Channel, worker_pb2_grpc.WorkerServiceStub]:
        channel = self.channel(self.mesh.worker_addresses[0], who)
        return channel, worker_pb2_grpc.WorkerServiceStub(channel)

    def client(self, who: str, api_key: str = "") -> Client:
        files = self.certs[who]
        return Client(
            self.mesh.router_address,
            timeout_s=180,
            api_key=api_key,
            tls_ca_file=str(self.ca.ca_file),
            tls_cert_file=str(files.cert),
            tls_key_file=str(files.key),
        )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("trust")
    ca = TestCA(tmp / "tls")
    roles = ("registry", "router", "worker", "admin", "operator", "client")
    certs = {role: ca.issue(role, ID(role)) for role in roles}
    env: dict[str, str] = {
        "MODELYARD_REGISTRY_ADMIN_TOKEN": ADMIN_TOKEN,
        "MODELYARD_REGISTRY_READER_TOKENS": f"router:{ROUTER_READS},worker:{WORKER_READS}",
        "MODELYARD_REGISTRY_ADMIN_IDENTITIES": ID("admin"),
        "MODELYARD_REGISTRY_READER_IDENTITIES": f"{ID('router')},{ID('worker')}",
        "MODELYARD_WORKER_ADMIN_TOKEN": OPERATOR_TOKEN,
        "MODELYARD_WORKER_API_KEY": ROUTER_TO_WORKER,
        "MODELYARD_WORKER_OPERATOR_IDENTITIES": ID("operator"),
        "MODELYARD_WORKER_ROUTER_IDENTITIES": ID("router"),
        "MODELYARD_WORKER_REGISTRY_TOKEN": WORKER_READS,
        "MODELYARD_ROUTER_API_KEYS": f"app:{CLIENT_KEY}",
        "MODELYARD_ROUTER_REGISTRY_TOKEN": ROUTER_READS,
        "MODELYARD_ROUTER_WORKER_API_KEY": ROUTER_TO_WORKER,
    }
    for service in ("registry", "worker"):
        env |= ca.env(service, certs[service], mtls=True)
    # Clients prove themselves with keys: the router's port takes any CA-signed certificate
    # or none; its own certificate still proves "router" to the registry and workers.
    env |= ca.env("router", certs["router"], mtls=False)
    local = LocalMesh(data_dir=tmp / "mesh", worker_threads=2, env=env)
    local.start()
    try:
        yield Mesh(local, ca, certs)
    finally:
        local.stop()


def refused(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value


def test_a_generation_streams_with_every_guard_on(mesh: Mesh) -> None:
    model = smollm2_model()
    channel, registry = mesh.registry("admin")
    with channel:
        registry.RegisterModel(
            registry_pb2.RegisterModelRequest(model=model),
            timeout=30,
            metadata=bearer_metadata(ADMIN_TOKEN),
        )
    with mesh.client("client", CLIENT_KEY) as client:
        stream = client.generate(model=key_of(model), prompt="Hi", max_tokens=4)
        deltas = [e for e in stream.events() if e.WhichOneof("event") == "delta"]
        finished = stream.finished
    assert (
        deltas
        and finished is not None
        and finished.usage.output_tokens == len([t for e in deltas for t in e.delta.token_ids])
    )


def test_registry_writes_need_the_admin_identity_and_token(mesh: Mesh) -> None:
    request = registry_pb2.SetStageRequest(name="smollm2", version="x")
    for who, token, code, words in (
        ("worker", ADMIN_TOKEN, grpc.StatusCode.PERMISSION_DENIED, ID("worker")),
        ("router", ADMIN_TOKEN, grpc.StatusCode.PERMISSION_DENIED, ID("router")),
        ("admin", "", grpc.StatusCode.UNAUTHENTICATED, "admin token"),
        ("admin", ROUTER_READS, grpc.StatusCode.PERMISSION_DENIED, "not valid"),
    ):
        channel, registry = mesh.registry(who)
        with channel:
            err = refused(registry.SetStage, request, timeout=30, metadata=bearer_metadata(token))
        assert err.code() == code, (who, err.details())
        assert words in (err.details() or ""), (who, err.details())


def test_registry_reads_need_a_reader(mesh: Mesh) -> None:
    request = registry_pb2.ListModelsRequest()
    channel, registry = mesh.registry("client")
    with channel:
        err = refused(
            registry.ListModels, request, timeout=30, metadata=bearer_metadata(ROUTER_READS)
        )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and ID("client") in (err.details() or "")
    channel, registry = mesh.registry("router")
    with channel:
        registry.ListModels(request, timeout=30, metadata=bearer_metadata(ROUTER_READS))


def test_workers_generate_only_for_routers_and_load_only_for_operators(mesh: Mesh) -> None:
    status = worker_pb2.GetStatusRequest()
    channel, worker = mesh.worker("client")
    with channel:
        err = refused(
            worker.GetStatus, status, timeout=30, metadata=bearer_metadata(ROUTER_TO_WORKER)
        )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and ID("router") in (err.details() or "")
    channel, worker = mesh.worker("router")
    with channel:
        err = refused(worker.GetStatus, status, timeout=30)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "API key" in (err.details() or "")
        worker.GetStatus(status, timeout=30, metadata=bearer_metadata(ROUTER_TO_WORKER))
        load = worker_pb2.LoadModelRequest(model=smollm2_model())
        err = refused(
            worker.LoadModel, load, timeout=30, metadata=bearer_metadata(ROUTER_TO_WORKER)
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    channel, worker = mesh.worker("operator")
    with channel:
        err = refused(
            worker.UnloadModel,
            worker_pb2.UnloadModelRequest(name="nope", version="1"),
            timeout=30,
            metadata=bearer_metadata(OPERATOR_TOKEN),
        )
        # Past the gate: the operator may unload, there is just nothing by that name.
        assert err.code() not in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        ), err.details()


def test_clients_need_a_key(mesh: Mesh) -> None:
    with mesh.client("client") as anonymous, pytest.raises(Unauthenticated):
        anonymous.list_models()
    with mesh.client("client", "guess") as guessing, pytest.raises(PermissionDenied):
        guessing.list_models()
    with mesh.client("client", CLIENT_KEY) as client:
        client.list_models()
