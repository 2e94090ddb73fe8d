"""The router's outcome shipper against the real OutcomeService (registry servicer on a
SQLite store, on loopback): batches arrive once, the buffer waits out an absent registry,
drops its oldest (counted) when full, never blocks `add`, and flushes when it stops."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from modelyard.channel_options import CHANNEL_OPTIONS
from modelyard.local_mesh import free_port
from modelyard.server import RunningServer, start_server
from modelyard.v1 import outcomes_pb2, outcomes_pb2_grpc, router_pb2
from registry.outcome_service import SERVICE_NAME, add_to_server
from registry.outcomes import OutcomeStore
from registry.store import RegistryStore, open_store
from router.outcomes import MeshOutcomes, OutcomeShipper
from router.stats import Outcome, RoutingStats


class Registry:
    """The OutcomeService on a fixed port, stopped and started again at will."""

    def __init__(self, store: RegistryStore) -> None:
        self.outcomes = OutcomeStore(store.engine)
        self.address = f"127.0.0.1:{free_port()}"
        self._running: RunningServer | None = None

    async def start(self) -> None:
        self._running = await start_server(
            self.address, functools.partial(add_to_server, self.outcomes), [SERVICE_NAME]
        )

    async def stop(self) -> None:
        if self._running is not None:
            await self._running.stop(0)
            self._running = None

    async def requests(self) -> int:
        reply = await self.outcomes.query()
        return sum(m.traffic.requests for m in reply.models)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    reg = Registry(store)
    yield reg
    await reg.stop()
    await store.close()


@pytest.fixture
async def stub(registry: Registry) -> AsyncIterator[outcomes_pb2_grpc.OutcomeServiceAsyncStub]:
    async with grpc.aio.insecure_channel(registry.address, options=CHANNEL_OPTIONS) as channel:
        yield cast(
            "outcomes_pb2_grpc.OutcomeServiceAsyncStub",
            outcomes_pb2_grpc.OutcomeServiceStub(channel),
        )


def mesh_of(
    stub: outcomes_pb2_grpc.OutcomeServiceAsyncStub, shipper: OutcomeShipper
) -> MeshOutcomes:
    return MeshOutcomes(stub, stub, shipper, router_id="r1", feedback_wait_s=0)


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"not in {timeout_s:.0f} s: {what}"
        await asyncio.sleep(0.02)


def done(i: int) -> Outcome:
    return Outcome(model="m", version="1", ttft_ms=10.0 + i, total_ms=50.0)


async def test_outcomes_wait_out_an_absent_registry_and_arrive_once(
    registry: Registry, stub: outcomes_pb2_grpc.OutcomeServiceAsyncStub
) -> None:
    shipper = OutcomeShipper(stub, interval_s=0.05, timeout_s=1.0)
    mesh = mesh_of(stub, shipper)
    shipper.start()
    try:
        for i in range(5):
            mesh.record(f"r{i}", done(i))  # the registry is not there yet
        assert not await shipper.flush(timeout_s=0.3)
        assert len(shipper) == 5 and shipper.dropped == 0
        stats = await mesh.routing_stats(router_pb2.GetRoutingStatsRequest(), RoutingStats())
        assert not stats.mesh_wide
        await registry.start()
        for i in range(5, 8):
            mesh.record(f"r{i}", done(i))
        await until(lambda: len(shipper) == 0, "the buffer reaches the registry")
        assert await registry.requests() == 8
        stats = await mesh.routing_stats(router_pb2.GetRoutingStatsRequest(), RoutingStats())
        assert stats.mesh_wide and stats.models[0].traffic.requests == 8
    finally:
        await shipper.close()


async def test_a_full_buffer_drops_its_oldest_and_counts_them(
    registry: Registry, stub: outcomes_pb2_grpc.OutcomeServiceAsyncStub
) -> None:
    shipper = OutcomeShipper(stub, capacity=4, interval_s=0.05, timeout_s=1.0)
    metrics = CollectorRegistry()
    metrics.register(shipper.collector())
    mesh = mesh_of(stub, shipper)
    for i in range(10):  # no task, no registry: add alone never waits
        mesh.record(f"r{i}", done(i))
    assert len(shipper) == 4 and shipper.dropped == 6
    assert not shipper.holds("r5") and shipper.holds("r6")
    assert b"modelyard_router_outcomes_dropped_total 6.0" in generate_latest(metrics)
    await registry.start()
    shipper.start()
    await shipper.close()  # a graceful stop ships what is left
    assert len(shipper) == 0
    stored = await registry.outcomes.query()
    assert stored.models[0].traffic.requests == 4


async def test_a_refused_batch_is_dropped_counted_not_retried_forever(
    registry: Registry, stub: outcomes_pb2_grpc.OutcomeServiceAsyncStub
) -> None:
    await registry.start()
    shipper = OutcomeShipper(stub, interval_s=0.05, timeout_s=1.0)
    shipper.add(outcomes_pb2.Outcome(request_id="x" * 500, model="m"))  # over the id bound
    shipper.start()
    try:
        assert await shipper.flush(timeout_s=20)
        assert shipper.dropped == 1 and len(shipper) == 0
    finally:
        await shipper.close()
