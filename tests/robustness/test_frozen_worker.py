"""Frozen workers (issue #11): a worker that stops (SIGSTOP) costs its own requests at
most one silence timeout and is ejected; a slow worker (cold load, queue) is not.

Regression: with two workers behind the router, SIGSTOP of one dropped throughput to ~0
for seconds: every request sent to it waited for its own deadline. Now its requests go
to the other worker after one silence timeout, well before the HTTP/2 keepalive (10 s +
5 s) would notice, and its breaker opens at the first silent attempt. Sim-engine
workers, a router in this process, loopback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest

from modelyard.v1 import model_pb2, router_pb2, router_pb2_grpc
from tests.robustness.sim_workers import (
    artifact_in,
    ask,
    load,
    sim_model,
    sim_router,
    sim_worker,
    spawn_sim_worker,
    until_running,
    until_watching,
)
from tests.unit.router.doubles import RouterUnderTest

pytestmark = pytest.mark.asyncio(loop_scope="session")

SILENCE_S = 1.0
# Shorter than the HTTP/2 keepalive's 15 s: only the silence rule can save these requests.
DEADLINE_S = 8.0
OPEN = router_pb2.BREAKER_STATE_OPEN
CLOSED = router_pb2.BREAKER_STATE_CLOSED


async def complete(
    stub: router_pb2_grpc.RouterServiceAsyncStub, request: router_pb2.GenerateRequest
) -> list[router_pb2.GenerateResponse]:
    return [e async for e in stub.Generate(request, timeout=DEADLINE_S)]


async def until_warm(router: RouterUnderTest, model: model_pb2.Model, count: int) -> None:
    async with asyncio.timeout(30):
        while True:
            if len(router.pool.warm_workers(model)) == count:
                return
            await asyncio.sleep(0.05)


async def test_a_frozen_worker_is_retried_around_and_ejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = sim_model(artifact_in(tmp_path))
    frozen = spawn_sim_worker(tmp_path, "frozen", [model])
    healthy = spawn_sim_worker(tmp_path, "healthy", [model])
    try:
        async with sim_router(
            [model],
            [frozen.address, healthy.address],
            silence_timeout_s=SILENCE_S,
            breaker_open_s=120.0,
        ) as router:
            await until_watching(router, 2)
            # Both warm: only the freeze counts, and a burst spreads over both.
            await asyncio.gather(load(frozen.address, model), load(healthy.address, model))
            await until_warm(router, model, 2)
            os.kill(frozen.process.pid, signal.SIGSTOP)
            try:
                with caplog.at_level(logging.WARNING, logger="router.relay.generation"):
                    replies = await asyncio.gather(
                        *(complete(router.stub, ask()) for _ in range(8))
                    )
                breakers = router.parts.accounting.breakers
                assert breakers.state(frozen.address) == OPEN
                assert breakers.state(healthy.address) == CLOSED
            finally:
                os.kill(frozen.process.pid, signal.SIGCONT)
    finally:
        frozen.stop()
        healthy.stop()
    # Every request was served, by the healthy worker, within its deadline (gather
    # raised otherwise); those first sent to the frozen one were its second attempt.
    assert {r[0].started.worker_id for r in replies} == {"healthy"}
    assert all(r[-1].WhichOneof("event") == "finished" for r in replies)
    retried = [r for r in replies if r[0].started.attempt == 2]
    silent = [m for m in caplog.messages if "before the first token" in m and "ejected" in m]
    assert retried and len(silent) == len(retried)
    assert all(f"sent nothing for {SILENCE_S:.1f}s" in m for m in silent)


async def test_a_cold_load_longer_than_the_silence_timeout_is_not_abandoned(
    tmp_path: Path,
) -> None:
    model = sim_model(artifact_in(tmp_path), sim_load_ms="2500")
    async with sim_worker(tmp_path, [model], generate_keepalive_s=0.2) as worker:
        address = f"127.0.0.1:{worker.server.port}"
        async with sim_router([model], [address], silence_timeout_s=SILENCE_S) as router:
            await until_watching(router, 1)
            reply = [e async for e in router.stub.Generate(ask(), timeout=60)]
            state = router.parts.accounting.breakers.state(address)
    started, finished = reply[0].started, reply[-1].finished
    assert started.cold_start and started.attempt == 1
    assert finished.timings.load_ms > 2 * SILENCE_S * 1000  # the case under test
    assert finished.usage.output_tokens == 8 and state == CLOSED


async def test_a_queue_wait_longer_than_the_silence_timeout_is_not_abandoned(
    tmp_path: Path,
) -> None:
    model = sim_model(artifact_in(tmp_path), sim_decode_ms_per_token="20")
    async with sim_worker(
        tmp_path, [model], generate_keepalive_s=0.2, max_parallel_sequences=1
    ) as worker:
        address = f"127.0.0.1:{worker.server.port}"
        async with sim_router([model], [address], silence_timeout_s=SILENCE_S) as router:
            await until_watching(router, 1)
            await complete(router.stub, ask())  # warm: only the queue counts
            # 150 tokens at 20 ms hold the one slot for ~3 s; the second request queues.
            first = asyncio.create_task(complete_within(router.stub, ask(max_tokens=150), 60))
            await until_running(address, True)
            queued = await complete_within(router.stub, ask(), 60)
            await first
            state = router.parts.accounting.breakers.state(address)
    assert queued[0].started.attempt == 1 and state == CLOSED
    assert queued[-1].finished.timings.queue_ms > 2 * SILENCE_S * 1000  # the case under test


async def complete_within(
    stub: router_pb2_grpc.RouterServiceAsyncStub, request: router_pb2.GenerateRequest, s: float
) -> list[router_pb2.GenerateResponse]:
    return [e async for e in stub.Generate(request, timeout=s)]
