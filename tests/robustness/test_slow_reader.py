"""Slow readers and endless streams (issue #11): a client that stops reading holds no
decode slot past the idle-write timeout, and no stream outlives the maximum duration.

Real servers on loopback, the sim engine. The client's receive window is shrunk to
~1 KiB (no BDP probing), so a reader that stops fills it within a few dozen tokens.
Either way the client, once it reads again, gets DEADLINE_EXCEEDED naming the limit,
and the worker's running sequences fall back to 0 long before the generation could
have finished on its own (3000 tokens at 5 ms each).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from modelyard.limits import ServerLimits
from modelyard.v1 import router_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.robustness.sim_workers import (
    artifact_in,
    ask,
    sim_model,
    sim_router,
    sim_worker,
    until_running,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

LONG = 3000  # tokens: 15 s of decoding, far longer than any limit below
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]


@asynccontextmanager
async def serving(
    tmp_path: Path, through: str, limits: ServerLimits
) -> AsyncIterator[tuple[str, Any, Any]]:
    """(worker address, a stub of `through`'s Generate, the request it takes)."""
    model = sim_model(artifact_in(tmp_path), sim_decode_ms_per_token="5")
    # Only the service under test gets the tight limits.
    worker_limits = limits if through == "worker" else ServerLimits()
    async with sim_worker(tmp_path, [model], limits=worker_limits) as worker:
        address = f"127.0.0.1:{worker.server.port}"
        if through == "worker":
            request = worker_pb2.WorkerServiceGenerateRequest(
                model=model, prompt="Tell me", load_if_cold=True
            )
            request.sampling.max_tokens = LONG
            async with grpc.aio.insecure_channel(address, options=SMALL_WINDOW) as channel:
                yield address, worker_pb2_grpc.WorkerServiceStub(channel), request
            return
        async with sim_router([model], [address], limits=limits) as router:
            target = f"127.0.0.1:{router_port(router)}"
            async with grpc.aio.insecure_channel(target, options=SMALL_WINDOW) as channel:
                yield address, router_pb2_grpc.RouterServiceStub(channel), ask(max_tokens=LONG)


def router_port(router: Any) -> int:
    # The router double's stub holds the channel to its server; its target has the port.
    return int(router.stub.Generate._channel.target.decode().rsplit(":", 1)[1])


async def read_rest(call: Any) -> tuple[int, grpc.aio.AioRpcError]:
    """Events read until the stream's error."""
    read = 0
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while await call.read() is not grpc.aio.EOF:
            read += 1
    return read, ended.value


@pytest.mark.parametrize("through", ["worker", "router"])
async def test_a_client_that_stops_reading_loses_its_stream_and_slot(
    tmp_path: Path, through: str
) -> None:
    limits = ServerLimits(stream_idle_write_s=1.0)
    async with serving(tmp_path, through, limits) as (worker, stub, request):
        call = stub.Generate(request, timeout=120)
        await call.read()  # the stream is open; from now on the client reads nothing
        await until_running(worker, True)
        await until_running(worker, False)
        read, err = await read_rest(call)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"MODELYARD_{through.upper()}_LIMITS_STREAM_IDLE_WRITE_S" in (err.details() or "")
    assert read < LONG  # cut short, not finished


@pytest.mark.parametrize("through", ["worker", "router"])
async def test_a_stream_ends_at_the_maximum_duration(tmp_path: Path, through: str) -> None:
    limits = ServerLimits(max_stream_s=1.5)
    async with serving(tmp_path, through, limits) as (worker, stub, request):
        read, err = await read_rest(stub.Generate(request, timeout=120))
        await until_running(worker, False)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"MODELYARD_{through.upper()}_LIMITS_MAX_STREAM_S" in (err.details() or "")
    assert 0 < read < LONG
