"""TLS and mTLS on a real grpc.aio server: what must be refused is refused, for the right reason.

Each refusal is checked against a control that succeeds with the same server, so a test
cannot pass because the server was merely unreachable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelyard.server import RunningServer, start_server
from modelyard.tls import TlsSettings, secure_or_insecure_channel, tls_from_env
from tests.tls_certs import CertFiles, TestCA

HEALTH = health_pb2.HealthCheckRequest()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A valid CA that signed neither the server nor our client."""
    return TestCA(tmp_path_factory.mktemp("other-tls"))


def own_tls(files: CertFiles, *, mtls: bool = False, server_name: str = "") -> TlsSettings:
    return TlsSettings(
        cert_file=str(files.cert),
        key_file=str(files.key),
        ca_file=str(files.ca),
        mtls=mtls,
        server_name=server_name,
    )


async def health_code(address: str, tls: TlsSettings | None) -> grpc.StatusCode:
    async with secure_or_insecure_channel(address, tls) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(HEALTH, timeout=3)
        except grpc.aio.AioRpcError as err:
            return cast(grpc.StatusCode, err.code())
    return grpc.StatusCode.OK


@pytest.fixture
async def tls_server(ca: TestCA) -> AsyncIterator[str]:
    running = await start_server(
        "127.0.0.1:0", lambda s: None, ["modelyard.test.T"], tls=own_tls(ca.issue("server"))
    )
    yield f"127.0.0.1:{running.port}"
    await running.stop(0)


@pytest.fixture
async def mtls_server(ca: TestCA) -> AsyncIterator[str]:
    running: RunningServer = await start_server(
        "127.0.0.1:0",
        lambda s: None,
        ["modelyard.test.T"],
        tls=own_tls(ca.issue("server"), mtls=True),
    )
    yield f"127.0.0.1:{running.port}"
    await running.stop(0)


def test_tls_settings_from_env_per_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_WORKER_TLS_CERT_FILE", "/c.crt")
    monkeypatch.setenv("MODELYARD_WORKER_TLS_KEY_FILE", "/c.key")
    monkeypatch.setenv("MODELYARD_WORKER_TLS_MTLS", "true")
    worker = tls_from_env("worker")
    assert (worker.cert_file, worker.key_file, worker.mtls) == ("/c.crt", "/c.key", True)
    assert worker.enabled
    assert not tls_from_env("router").enabled  # the local default: plaintext
    router = tls_from_env("router", {"MODELYARD_ROUTER_TLS_CA_FILE": "/ca.crt"})
    assert not router.enabled and router.client_enabled and router.ca_file == "/ca.crt"


async def test_tls_port_refuses_plaintext(tls_server: str, ca: TestCA) -> None:
    assert await health_code(tls_server, TlsSettings(ca_file=str(ca.ca_file))) == grpc.StatusCode.OK
    assert await health_code(tls_server, None) == grpc.StatusCode.UNAVAILABLE


async def test_a_valid_ca_that_did_not_sign_the_server_is_refused(
    tls_server: str, ca: TestCA, other_ca: TestCA
) -> None:
    assert await health_code(tls_server, TlsSettings(ca_file=str(ca.ca_file))) == grpc.StatusCode.OK
    stranger = TlsSettings(ca_file=str(other_ca.ca_file))
    assert await health_code(tls_server, stranger) == grpc.StatusCode.UNAVAILABLE


async def test_a_server_name_the_certificate_does_not_carry_is_refused(
    tls_server: str, ca: TestCA
) -> None:
    # The certificate names localhost and 127.0.0.1: verifying it as another name must fail.
    right = TlsSettings(ca_file=str(ca.ca_file), server_name="localhost")
    wrong = TlsSettings(ca_file=str(ca.ca_file), server_name="worker.other.svc")
    assert await health_code(tls_server, right) == grpc.StatusCode.OK
    assert await health_code(tls_server, wrong) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_clients_without_a_certificate(mtls_server: str, ca: TestCA) -> None:
    assert await health_code(mtls_server, own_tls(ca.issue("client"), mtls=True)) == (
        grpc.StatusCode.OK
    )
    no_cert = TlsSettings(ca_file=str(ca.ca_file))
    assert await health_code(mtls_server, no_cert) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_a_client_certificate_from_another_ca(
    mtls_server: str, ca: TestCA, other_ca: TestCA
) -> None:
    # The client trusts the server's CA but presents a leaf another CA signed.
    foreign = other_ca.issue("intruder")
    tls = TlsSettings(
        cert_file=str(foreign.cert), key_file=str(foreign.key), ca_file=str(ca.ca_file), mtls=True
    )
    assert await health_code(mtls_server, tls) == grpc.StatusCode.UNAVAILABLE


def test_tls_settings_need_a_key_and_for_mtls_a_ca(ca: TestCA, tmp_path: Path) -> None:
    files = ca.issue("server")
    with pytest.raises(ValueError, match="key_file"):
        TlsSettings(cert_file=str(files.cert)).server_credentials()
    with pytest.raises(ValueError, match="ca_file"):
        TlsSettings(
            cert_file=str(files.cert), key_file=str(files.key), mtls=True
        ).server_credentials()
