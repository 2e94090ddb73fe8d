"""The OpenAI front refuses before it reads: a bad API key, a body over the limit and a
request over the concurrency limit are answered at once, and a refused body is not
drained. Raw sockets trickle the bodies, so nothing on the client side buffers them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import httpx2 as httpx
import pytest
import pytest_asyncio

from modelyard.local_mesh import free_port
from modelyard.v1 import router_pb2
from router.openai.admission import FrontLimits
from router.openai.server import HttpFront, start_http_front

KEY = "limits-test-key"
MiB = 1024 * 1024
CHUNK = b"x" * (16 * 1024)
# A client that sends this much without being stopped has had its body read.
BUDGET = 2 * MiB


class _Router:
    """Lists no models, each call held until `release` is set; never generates."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.waiting = 0
        self.two_waiting = asyncio.Event()

    def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        raise AssertionError("a refused request reached the router")

    async def list_models(
        self, *, timeout_s: float | None
    ) -> router_pb2.RouterServiceListModelsResponse:
        self.waiting += 1
        if self.waiting >= 2:
            self.two_waiting.set()
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1
        return router_pb2.RouterServiceListModelsResponse()


@pytest_asyncio.fixture
async def router() -> _Router:
    return _Router()


async def _front(router: _Router, limits: FrontLimits | None = None) -> HttpFront:
    return await start_http_front(f"127.0.0.1:{free_port()}", router, api_keys=[KEY], limits=limits)


@pytest_asyncio.fixture
async def front(router: _Router) -> AsyncIterator[HttpFront]:
    http = await _front(router)
    try:
        yield http
    finally:
        await http.stop()


@dataclass
class Trickled:
    response: bytes
    sent_at_response: int | None  # body bytes sent when the first response byte came
    sent: int
    closed: bool  # the server closed (or reset) the connection


async def _trickle(port: int, head: bytes, *, chunked: bool = False) -> Trickled:
    """Send `head`, then 16 KiB every 20 ms while reading, until the server closes the
    connection or BUDGET bytes went out."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = bytearray()
    sent = 0
    sent_at_response: int | None = None

    async def read() -> None:
        nonlocal sent_at_response
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if sent_at_response is None:
                    sent_at_response = sent
                got.extend(data)

    reading = asyncio.create_task(read())
    try:
        writer.write(head)
        await writer.drain()
        frame = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n" if chunked else CHUNK
        while not reading.done() and sent < BUDGET:
            try:
                writer.write(frame)
                await writer.drain()
            except ConnectionError:
                break
            sent += len(CHUNK)
            await asyncio.sleep(0.02)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reading), 1.0)
        return Trickled(bytes(got), sent_at_response, sent, reading.done())
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: front", "content-type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _assert_refused_early(result: Trickled, status: int) -> None:
    assert result.response.startswith(f"HTTP/1.1 {status} ".encode()), result.response[:200]
    assert result.sent_at_response is not None and result.sent_at_response < MiB
    # Closed, not drained: the client was stopped long before its budget ran out.
    assert result.closed and result.sent < MiB, result.sent
    assert b'"error"' in result.response


@pytest.mark.parametrize(
    "auth", [{}, {"authorization": "Bearer wrong"}], ids=["no-key", "wrong-key"]
)
async def test_a_bad_key_is_401_before_the_body_is_read_and_the_connection_closes(
    front: HttpFront, auth: dict[str, str]
) -> None:
    # 200 MB is over the size limit too: the key is checked first.
    head = _head("/v1/chat/completions", {"content-length": "200000000", **auth})

    result = await _trickle(front.port, head)

    _assert_refused_early(result, 401)


async def test_a_declared_body_over_the_limit_is_413_before_it_is_read(
    front: HttpFront,
) -> None:
    head = _head(
        "/v1/chat/completions",
        {"content-length": "200000000", "authorization": f"Bearer {KEY}"},
    )

    result = await _trickle(front.port, head)

    _assert_refused_early(result, 413)
    assert b'"request_too_large"' in result.response


async def test_a_chunked_body_is_cut_off_at_the_limit(router: _Router) -> None:
    http = await _front(router, FrontLimits(max_body_bytes=256 * 1024))
    try:
        head = _head(
            "/v1/chat/completions",
            {"transfer-encoding": "chunked", "authorization": f"Bearer {KEY}"},
        )

        result = await _trickle(http.port, head, chunked=True)
    finally:
        await http.stop()

    _assert_refused_early(result, 413)
    assert result.sent_at_response is not None and result.sent_at_response > 256 * 1024


async def test_requests_over_the_concurrency_limit_are_429_at_once(router: _Router) -> None:
    http = await _front(router, FrontLimits(max_concurrency=2))
    router.release.clear()
    auth = {"authorization": f"Bearer {KEY}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http.port}") as client:
            held = [asyncio.create_task(client.get("/v1/models", headers=auth)) for _ in "ab"]
            await asyncio.wait_for(router.two_waiting.wait(), 10)

            over = await asyncio.wait_for(client.get("/v1/models", headers=auth), 5)

            assert over.status_code == 429
            assert over.headers["retry-after"] == "1"
            assert over.json()["error"]["code"] == "rate_limit_exceeded"
            assert set(over.json()["error"]) == {"message", "type", "param", "code"}
            router.release.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            # The slots are free again.
            assert (await client.get("/v1/models", headers=auth)).status_code == 200
    finally:
        router.release.set()
        await http.stop()
