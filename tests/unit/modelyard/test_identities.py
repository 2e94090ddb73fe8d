"""mTLS identities on real grpc.aio servers: a certificate the CA signed proves only the
role its SAN names. Each service's real gate guards a recording service with that
service's real method names, so what is checked is who gets in, not what the handler does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from modelyard.auth import AccessGate, current_caller, method_name
from modelyard.bearer import bearer_metadata
from modelyard.server import start_server
from modelyard.tls import TlsSettings, secure_or_insecure_channel
from registry.auth import SERVICE_NAME as REGISTRY
from registry.auth import registry_gate
from router.auth import SERVICE_NAME as ROUTER
from router.auth import router_gate
from tests.tls_certs import CertFiles, TestCA
from worker.auth import SERVICE_NAME as WORKER
from worker.auth import worker_gate

ADMIN_ID = "spiffe://modelyard/registry-admin"
ROUTER_ID = "spiffe://modelyard/router"
WORKER_ID = "spiffe://modelyard/worker"
CLIENT_ID = "spiffe://modelyard/client"
OPERATOR_ID = "spiffe://modelyard/operator"


class Recorder:
    """Every method of a service, answering with who the gate said called."""

    def __init__(self, service: str, methods: Sequence[str]) -> None:
        self.service = service
        self.methods = methods
        self.ran: list[str] = []

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(name: str) -> grpc.RpcMethodHandler:
            async def call(request: bytes, context: Any) -> bytes:
                self.ran.append(name)
                caller = current_caller()
                assert caller is not None  # every method here is guarded
                return f"{caller.key_name}|{caller.identity}".encode()

            return grpc.unary_unary_rpc_method_handler(call, lambda b: b, lambda b: b)

        return grpc.method_handlers_generic_handler(
            self.service, {m: unary(m) for m in self.methods}
        )


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("identities"))


@pytest.fixture(scope="module")
def certs(ca: TestCA) -> dict[str, CertFiles]:
    ids = {
        "server": "",
        "admin": ADMIN_ID,
        "router": ROUTER_ID,
        "worker": WORKER_ID,
        "client": CLIENT_ID,
        "operator": OPERATOR_ID,
    }
    return {name: ca.issue(name, identity) for name, identity in ids.items()}


def tls_of(files: CertFiles, *, mtls: bool = True) -> TlsSettings:
    return TlsSettings(
        cert_file=str(files.cert), key_file=str(files.key), ca_file=str(files.ca), mtls=mtls
    )


async def serve(gate: AccessGate, recorder: Recorder, server_cert: CertFiles) -> tuple[int, Any]:
    running = await start_server(
        "127.0.0.1:0",
        lambda server: server.add_generic_rpc_handlers((recorder.handler(),)),
        [recorder.service],
        tls=tls_of(server_cert),
        interceptors=[gate],
    )
    return running.port, running


async def call(
    port: int, files: CertFiles, service: str, method: str, token: str = ""
) -> tuple[grpc.StatusCode, str]:
    channel = secure_or_insecure_channel(f"localhost:{port}", tls_of(files))
    async with channel:
        rpc = channel.unary_unary(method_name(service, method), lambda b: b, lambda b: b)
        try:
            reply = await rpc(b"", timeout=10, metadata=bearer_metadata(token))
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
        return grpc.StatusCode.OK, reply.decode()


@pytest.fixture
async def registry(certs: dict[str, CertFiles]) -> AsyncIterator[tuple[int, Recorder]]:
    recorder = Recorder(REGISTRY, ["RegisterModel", "PutRoute", "GetModel", "Watch"])
    gate = registry_gate(admin_identities=[ADMIN_ID], reader_identities=[ROUTER_ID, WORKER_ID])
    port, running = await serve(gate, recorder, certs["server"])
    yield port, recorder
    await running.stop(0)


async def test_registry_writes_only_from_admin_identities(
    registry: tuple[int, Recorder], certs: dict[str, CertFiles]
) -> None:
    port, recorder = registry
    for who in ("worker", "router", "client"):
        code, details = await call(port, certs[who], REGISTRY, "RegisterModel")
        assert code == grpc.StatusCode.PERMISSION_DENIED, who
        # The refusal names the identity it wanted and the one it got.
        assert ADMIN_ID in details and f"spiffe://modelyard/{who}" in details
    assert recorder.ran == []
    code, reply = await call(port, certs["admin"], REGISTRY, "PutRoute")
    assert (code, reply) == (grpc.StatusCode.OK, f"|{ADMIN_ID}")


async def test_registry_reads_from_readers_and_the_admin_only(
    registry: tuple[int, Recorder], certs: dict[str, CertFiles]
) -> None:
    port, recorder = registry
    for who, identity in (("router", ROUTER_ID), ("worker", WORKER_ID), ("admin", ADMIN_ID)):
        assert await call(port, certs[who], REGISTRY, "GetModel") == (
            grpc.StatusCode.OK,
            f"|{identity}",
        )
    code, _ = await call(port, certs["client"], REGISTRY, "GetModel")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert recorder.ran == ["GetModel"] * 3


async def test_worker_generate_from_router_identities_load_from_operators(
    certs: dict[str, CertFiles],
) -> None:
    recorder = Recorder(WORKER, ["Generate", "GetStatus", "LoadModel"])
    gate = worker_gate(
        admin_token="op-token",
        api_key="router-key",
        operator_identities=[OPERATOR_ID],
        router_identities=[ROUTER_ID],
    )
    port, running = await serve(gate, recorder, certs["server"])
    try:
        ok = await call(port, certs["router"], WORKER, "Generate", "router-key")
        assert ok[0] == grpc.StatusCode.OK and ok[1].endswith(f"|{ROUTER_ID}")
        # A client certificate, even with the router's key, is not a router.
        code, details = await call(port, certs["client"], WORKER, "Generate", "router-key")
        assert code == grpc.StatusCode.PERMISSION_DENIED and ROUTER_ID in details
        # A router certificate without the key proves only half of the role.
        code, details = await call(port, certs["router"], WORKER, "Generate")
        assert code == grpc.StatusCode.UNAUTHENTICATED and "API key" in details
        # The router's key and identity do not make it an operator.
        code, _ = await call(port, certs["router"], WORKER, "LoadModel", "router-key")
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert (await call(port, certs["operator"], WORKER, "LoadModel", "op-token"))[0] == (
            grpc.StatusCode.OK
        )
        assert recorder.ran == ["Generate", "LoadModel"]
    finally:
        await running.stop(0)


async def test_router_names_the_key_a_client_used(certs: dict[str, CertFiles]) -> None:
    recorder = Recorder(ROUTER, ["Generate"])
    gate = router_gate(["alice:k-alice", "bob:k-bob", "bare-key"])
    port, running = await serve(gate, recorder, certs["server"])
    try:
        assert await call(port, certs["client"], ROUTER, "Generate", "k-bob") == (
            grpc.StatusCode.OK,
            "bob|",
        )
        code, reply = await call(port, certs["client"], ROUTER, "Generate", "bare-key")
        # A bare key is named by a digest: logs tell keys apart without showing one.
        assert code == grpc.StatusCode.OK and reply.startswith("key-") and "bare" not in reply
        code, details = await call(port, certs["client"], ROUTER, "Generate", "alice")
        assert code == grpc.StatusCode.PERMISSION_DENIED and "k-alice" not in details
    finally:
        await running.stop(0)


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"mtls": True}, "no cert_file"),
        ({"ca_file": "ca"}, "no cert_file"),
        ({"key_file": "key"}, "no cert_file"),
        ({"cert_file": "cert"}, "key_file"),
        ({"cert_file": "cert", "key_file": "key", "mtls": True}, "ca_file"),
        ({"cert_file": "cert", "key_file": "key", "ca_file": "missing.pem"}, "not a readable"),
    ],
)
async def test_tls_that_cannot_be_honoured_stops_the_service(
    fields: dict[str, Any], complaint: str, certs: dict[str, CertFiles], tmp_path: Path
) -> None:
    files = certs["server"]
    real = {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)}
    values = {
        k: real.get(v, str(tmp_path / v)) if isinstance(v, str) else v for k, v in fields.items()
    }
    recorder = Recorder(WORKER, ["Generate"])
    with pytest.raises(ValueError, match=complaint):
        await start_server(
            "127.0.0.1:0",
            lambda server: server.add_generic_rpc_handlers((recorder.handler(),)),
            [WORKER],
            tls=TlsSettings.model_validate(values),
        )
