"""With a certificate in the router's TLS settings the OpenAI front speaks HTTPS only
(and with mtls asks for a client certificate); a TLS setting it cannot honour stops it
rather than letting it serve plaintext."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import httpx2 as httpx
import pytest
import pytest_asyncio

from modelyard.local_mesh import free_port
from modelyard.tls import TlsSettings
from modelyard.v1 import router_pb2
from router.openai.server import HttpFront, start_http_front
from tests.tls_certs import CertFiles, TestCA


class _Router:
    """Lists no models; never generates."""

    def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        raise AssertionError("not called")

    async def list_models(
        self, *, timeout_s: float | None
    ) -> router_pb2.RouterServiceListModelsResponse:
        return router_pb2.RouterServiceListModelsResponse()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("front-tls"))


@pytest.fixture(scope="module")
def server_files(ca: TestCA) -> CertFiles:
    return ca.issue("router")


async def _start(tls: TlsSettings) -> HttpFront:
    return await start_http_front(f"127.0.0.1:{free_port()}", _Router(), tls=tls)


@pytest_asyncio.fixture
async def https_front(server_files: CertFiles) -> AsyncIterator[HttpFront]:
    http = await _start(
        TlsSettings(cert_file=str(server_files.cert), key_file=str(server_files.key))
    )
    try:
        yield http
    finally:
        await http.stop()


def _trusting(ca: TestCA, client: CertFiles | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


async def _plain_http_reply(port: int) -> bytes:
    """What a plaintext HTTP request to `port` gets back (b"" if the server just closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /v1/models HTTP/1.1\r\nhost: front\r\n\r\n")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(5):
                return await reader.read()
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def test_the_front_serves_https_with_the_service_certificate(
    https_front: HttpFront, ca: TestCA
) -> None:
    async with httpx.AsyncClient(verify=_trusting(ca)) as client:
        reply = await client.get(f"https://127.0.0.1:{https_front.port}/v1/models")

    assert reply.status_code == 200
    assert reply.json() == {"object": "list", "data": []}


async def test_plain_http_to_the_tls_port_is_refused(https_front: HttpFront) -> None:
    reply = await _plain_http_reply(https_front.port)

    assert b"HTTP/1.1 200" not in reply
    assert b'"data"' not in reply


async def test_with_mtls_only_clients_with_a_certificate_get_in(
    ca: TestCA, server_files: CertFiles
) -> None:
    http = await _start(
        TlsSettings(
            cert_file=str(server_files.cert),
            key_file=str(server_files.key),
            ca_file=str(ca.ca_file),
            mtls=True,
        )
    )
    url = f"https://127.0.0.1:{http.port}/v1/models"
    try:
        async with httpx.AsyncClient(verify=_trusting(ca)) as anonymous:
            with pytest.raises(httpx.TransportError):
                await anonymous.get(url)
        async with httpx.AsyncClient(verify=_trusting(ca, ca.issue("client"))) as client:
            assert (await client.get(url)).status_code == 200
    finally:
        await http.stop()


@pytest.mark.parametrize(
    "broken",
    ["no-key", "mtls-without-ca", "missing-key-file"],
)
async def test_a_tls_setting_it_cannot_honour_stops_the_front(
    server_files: CertFiles, tmp_path: Path, broken: str
) -> None:
    cert, key = str(server_files.cert), str(server_files.key)
    tls = {
        "no-key": TlsSettings(cert_file=cert),
        "mtls-without-ca": TlsSettings(cert_file=cert, key_file=key, mtls=True),
        "missing-key-file": TlsSettings(cert_file=cert, key_file=str(tmp_path / "absent.key")),
    }[broken]
    port = free_port()

    with pytest.raises((ValueError, OSError)):
        http = await start_http_front(f"127.0.0.1:{port}", _Router(), tls=tls)
        await http.stop()

    with pytest.raises(OSError):  # nothing listens, in plaintext or otherwise
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
