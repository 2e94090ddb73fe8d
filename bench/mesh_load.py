"""The mesh bench's load generator: closed-loop clients over HTTP/1.1 (a lean raw-socket
client with keep-alive, so the client costs little of the cores it shares) or gRPC, and
the CPU time of a process tree from /proc."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from modelyard.tickets import TICKET_METADATA
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    router_pb2,
    router_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

MAX_TOKENS = 16
PROMPT = "Say hi"
# A chunk with text in it: the first one is the client's first token.
_CONTENT = re.compile(rb'"(?:content|text)":\s*"[^"]')
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Level:
    """One concurrency level of one system: what the clients saw."""

    ttfts_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0
    cpu_s: float = 0.0  # the router's process tree, over the level
    first_error: str = ""

    @property
    def rps(self) -> float:
        return len(self.ttfts_ms) / self.wall_s if self.wall_s else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def tree_cpu_s(root: int) -> float:
    """utime + stime of `root` and its descendants, in seconds (children that exited and
    were waited for count in cutime/cstime)."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            stats[int(entry.name)] = text.rsplit(")", 1)[1].split()
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        fields = stats.get(pid)
        if fields is None:
            continue
        # After ")": state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based.
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
        todo += [p for p, f in stats.items() if int(f[1]) == pid]
    return total / _TICKS


async def run_level(
    one: Callable[[], Awaitable[float]], requests: int, concurrency: int, cpu_of: int
) -> Level:
    """`requests` calls of `one` (which returns its TTFT in ms) with `concurrency` in flight."""
    level = Level()
    left = [requests]

    async def client() -> None:
        while left[0] > 0:
            left[0] -= 1
            try:
                level.ttfts_ms.append(await one())
            except Exception as err:  # a failed request is counted, never timed
                level.errors += 1
                level.first_error = level.first_error or f"{type(err).__name__}: {err}"[:200]

    cpu_before = tree_cpu_s(cpu_of)
    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    level.wall_s = time.perf_counter() - began
    level.cpu_s = tree_cpu_s(cpu_of) - cpu_before
    return level


class HttpClient:
    """One keep-alive HTTP/1.1 connection per client slot, streaming chat completions."""

    def __init__(self, address: str, model: str, api_key: str = "") -> None:
        self._host, port = address.rsplit(":", 1)
        self._port = int(port)
        body = json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "stream": True,
            }
        ).encode()
        auth = f"authorization: Bearer {api_key}\r\n".encode() if api_key else b""
        self._request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: " + address.encode()
            + b"\r\ncontent-type: application/json\r\n" + auth
            + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one(self) -> float:
        reused = bool(self._idle)
        conn = self._idle.pop() if reused else None
        if conn is None:
            conn = await asyncio.open_connection(self._host, self._port)
        reader, writer = conn
        began = time.perf_counter()
        try:
            writer.write(self._request)
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as err:
            partial = getattr(err, "partial", b"")
            writer.close()
            if not reused or partial:
                raise
            # The server closed this idle keep-alive connection (uvicorn after 5 s, while
            # the other systems ran): as any HTTP client, once more on a new connection.
            return await self.one()
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        first = await _read_body(reader, head, began)
        if b"connection: close" in head.lower():
            writer.close()
        else:
            self._idle.append(conn)
        return first

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()


async def _read_body(reader: asyncio.StreamReader, head: bytes, began: float) -> float:
    """Read the whole response body; the time (ms) the first text arrived."""
    lower = head.lower()
    seen, first = b"", None
    # At a line start: LiteLLM also sends its upstream's as llm_provider-content-length.
    length = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
    while True:
        if length is not None:
            seen = await reader.readexactly(int(length.group(1)))
        else:
            seen += await reader.read(65536)
            if not seen and reader.at_eof():
                raise RuntimeError("connection closed mid-response")
        if first is None and _CONTENT.search(seen):
            first = (time.perf_counter() - began) * 1000
        if length is not None or seen.endswith(b"\r\n0\r\n\r\n"):
            break
    if first is None:
        raise RuntimeError("a response without text")
    return first


class GrpcClient:
    """RouterService.Generate over `channels` channels in turn (each its own connection, so
    router processes sharing a port each get some)."""

    def __init__(self, address: str, model: str, api_key: str = "", channels: int = 1) -> None:
        own = [("grpc.use_local_subchannel_pool", 1)]
        self._channels = [grpc.aio.insecure_channel(address, options=own) for _ in range(channels)]
        self._stubs: list[Any] = [router_pb2_grpc.RouterServiceStub(c) for c in self._channels]
        self._turn = 0
        self._request = router_pb2.GenerateRequest(
            model=model,
            messages=[common_pb2.ChatMessage(role="user", content=PROMPT)],
            sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0),
        )
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None

    async def one(self) -> float:
        began = time.perf_counter()
        first = None
        self._turn = (self._turn + 1) % len(self._stubs)
        stub = self._stubs[self._turn]
        async for event in stub.Generate(self._request, timeout=30, metadata=self._metadata):
            if first is None and event.WhichOneof("event") == "delta":
                first = (time.perf_counter() - began) * 1000
        if first is None:
            raise RuntimeError("a stream without a delta")
        return first

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


class DirectClient:
    """Direct streams, as Client.generate(..., direct=True) does them but lean: one
    RouterService.PickWorker call, then the picked worker's Generate with the ticket (one
    kept channel per worker). TTFT counts from the pick: the router's part is in it."""

    def __init__(self, router: str, model: str, api_key: str = "") -> None:
        self._router = grpc.aio.insecure_channel(router)
        self._stub: Any = router_pb2_grpc.RouterServiceStub(self._router)
        self._workers: dict[str, tuple[grpc.aio.Channel, Any]] = {}
        self._request = router_pb2.PickWorkerRequest(
            request=router_pb2.GenerateRequest(
                model=model,
                messages=[common_pb2.ChatMessage(role="user", content=PROMPT)],
                sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0),
            )
        )
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None

    def _worker(self, address: str) -> Any:
        if address not in self._workers:
            channel = grpc.aio.insecure_channel(address)
            self._workers[address] = (channel, worker_pb2_grpc.WorkerServiceStub(channel))
        return self._workers[address][1]

    async def one(self) -> float:
        began = time.perf_counter()
        pick = await self._stub.PickWorker(self._request, timeout=30, metadata=self._metadata)
        call = self._worker(pick.worker_address).Generate(
            pick.worker_request, timeout=30, metadata=((TICKET_METADATA, pick.ticket),)
        )
        first = None
        async for event in call:
            if first is None and event.WhichOneof("event") == "delta":
                first = (time.perf_counter() - began) * 1000
        if first is None:
            raise RuntimeError("a stream without a delta")
        return first

    async def close(self) -> None:
        for channel, _ in self._workers.values():
            await channel.close()
        await self._router.close()


class WorkerClient:
    """WorkerService.Generate on one worker, as the router calls it: the baseline the
    router's own cost is measured against."""

    def __init__(self, address: str, model: model_pb2.Model, api_key: str) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub: Any = worker_pb2_grpc.WorkerServiceStub(self._channel)
        self._model = model_pb2.Model(name=model.name, version=model.version)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._n = 0

    async def one(self) -> float:
        self._n += 1
        request = worker_pb2.WorkerServiceGenerateRequest(
            request_id=f"direct-{self._n}",
            model=self._model,
            messages=[common_pb2.ChatMessage(role="user", content=PROMPT)],
            sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0),
            attempt=1,
        )
        began = time.perf_counter()
        first = None
        async for event in self._stub.Generate(request, timeout=30, metadata=self._metadata):
            if first is None and event.WhichOneof("event") == "delta":
                first = (time.perf_counter() - began) * 1000
        if first is None:
            raise RuntimeError("a stream without a delta")
        return first

    async def close(self) -> None:
        await self._channel.close()
