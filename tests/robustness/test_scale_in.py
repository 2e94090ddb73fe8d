"""Scale-in: a worker that leaves discovery (deregistered, draining) keeps serving the
streams the router already has on it; only new requests go elsewhere.

Regression (found by bench.scale_mesh's churn): the router closed a removed worker's
channel with grpc.aio's `close(grace)`, which waits only for calls still sending their
request, then destroys the channel, so every stream in flight to that worker ended
CANCELLED mid-generation. Sim-engine worker, a router in this process, loopback.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from modelyard.v1 import router_pb2
from tests.robustness.sim_workers import (
    artifact_in,
    ask,
    load,
    sim_model,
    sim_router,
    sim_worker,
    until_watching,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKENS = 40
MS_PER_TOKEN = 25  # a one-second stream: the removal lands in its middle


async def test_streams_on_a_removed_worker_finish(tmp_path: Path) -> None:
    model = sim_model(artifact_in(tmp_path), sim_decode_ms_per_token=str(MS_PER_TOKEN))
    async with sim_worker(tmp_path / "w", [model]) as worker:
        address = f"127.0.0.1:{worker.port}"
        await load(address, model)
        async with sim_router([model], [address]) as router:
            await until_watching(router, 1)
            streams = [router.stub.Generate(ask(max_tokens=TOKENS), timeout=20) for _ in range(3)]
            firsts = [await anext(aiter(s)) for s in streams]  # every stream has started
            router.pool.remove(address)  # discovery: the worker deregistered to drain
            rests = await asyncio.gather(*(_rest(s) for s in streams))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _rest(router.stub.Generate(ask(max_tokens=2), timeout=5))

    assert all(f.WhichOneof("event") == "started" for f in firsts)
    for events in rests:
        assert events[-1].WhichOneof("event") == "finished"
        assert events[-1].finished.usage.output_tokens == TOKENS
    # New requests are not sent to it: the pool has no worker left.
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def _rest(stream: object) -> list[router_pb2.GenerateResponse]:
    return [e async for e in stream]  # type: ignore[attr-defined]
