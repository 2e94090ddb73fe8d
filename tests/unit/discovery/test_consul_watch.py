"""The blocking-query watch and the router's pool following it, against the stand-in."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import consul
import pytest
from grpc_health.v1 import health_pb2

from modelyard.discovery import ServiceInstance
from modelyard.discovery.consul import register_service
from modelyard.discovery.static import static_instances
from modelyard.discovery.watch import ConsulWatch, instances_of, next_index
from modelyard.server import RunningServer, start_server
from router.discovery import start_discovery
from router.workers import WorkerPool
from tests.consul_agent import ConsulAgentStandIn
from tests.unit.discovery.conftest import SERVICE, eventually, fast_settings


def _register(agent: ConsulAgentStandIn, sid: str, port: int, status: str = "passing") -> None:
    client = consul.Consul(host=agent.host, port=agent.port)
    assert client.agent.service.register(
        "modelyard-worker",
        service_id=sid,
        address="127.0.0.1",
        port=port,
        check={"TTL": "60s", "Status": status},
    )


def test_blocking_query_waits_for_a_change_or_the_wait(agent: ConsulAgentStandIn) -> None:
    client = consul.Consul(host=agent.host, port=agent.port)
    _register(agent, "w1", 1001)
    index, nodes = client.health.service("modelyard-worker", passing=True)
    assert [n["Service"]["ID"] for n in nodes] == ["w1"]

    started = time.monotonic()
    same, _ = client.health.service("modelyard-worker", passing=True, index=index, wait="300ms")
    assert same == index
    assert time.monotonic() - started >= 0.29  # held for the wait, nothing changed

    def change_soon() -> None:
        time.sleep(0.2)
        agent.set_check("service:w1", "critical")

    started = time.monotonic()
    changer = asyncio.get_event_loop_policy().new_event_loop()
    try:
        future = changer.run_in_executor(None, change_soon)
        newer, nodes = client.health.service(
            "modelyard-worker", passing=True, index=index, wait="10s"
        )
        changer.run_until_complete(future)
    finally:
        changer.close()
    assert int(newer) > int(index)
    assert time.monotonic() - started < 5  # returned on the change, not after the wait
    assert nodes == []  # not passing any more
    _, every = client.health.service("modelyard-worker")
    assert [n["Checks"][1]["Status"] for n in every] == ["critical"]


async def test_watch_follows_check_updates(agent: ConsulAgentStandIn) -> None:
    seen: list[list[str]] = []

    async def on_change(instances: Sequence[ServiceInstance]) -> None:
        seen.append([i.service_id for i in instances])

    _register(agent, "w1", 1001)
    watch = ConsulWatch(fast_settings(agent), "modelyard-worker", on_change)
    task = asyncio.create_task(watch.run())
    try:
        await eventually(lambda: seen[-1:] == [["w1"]])
        await asyncio.to_thread(_register, agent, "w2", 1002)
        await eventually(lambda: seen[-1:] == [["w1", "w2"]])
        await asyncio.to_thread(agent.set_check, "service:w1", "critical")
        await eventually(lambda: seen[-1:] == [["w2"]])
        await asyncio.to_thread(agent.set_check, "service:w1", "passing")
        await eventually(lambda: seen[-1:] == [["w1", "w2"]])
        assert watch.last is not None
        assert watch.last[1].address == "127.0.0.1:1002"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_agent_down_keeps_the_last_set_and_logs_once(
    agent: ConsulAgentStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[list[str]] = []

    async def on_change(instances: Sequence[ServiceInstance]) -> None:
        calls.append([i.service_id for i in instances])

    _register(agent, "w1", 1001)
    watch = ConsulWatch(fast_settings(agent), "modelyard-worker", on_change, backoff_s=(0.02, 0.05))
    task = asyncio.create_task(watch.run())
    try:
        await eventually(lambda: calls == [["w1"]])
        with caplog.at_level(logging.INFO, logger="modelyard.discovery.watch"):
            await asyncio.to_thread(agent.stop)
            await eventually(lambda: watch.reachable is False)
            await asyncio.sleep(0.5)  # many retries while down
            assert calls == [["w1"]]  # no callback: the follower keeps its set
            await asyncio.to_thread(agent.start)  # same port, persisted state
            await eventually(lambda: watch.reachable is True)
        warnings = [r for r in caplog.records if "cannot watch" in r.getMessage()]
        assert len(warnings) == 1
        assert "keeping the last known set: 1 instance(s)" in warnings[0].getMessage()
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        await asyncio.to_thread(_register, agent, "w2", 1002)
        await eventually(lambda: calls[-1:] == [["w1", "w2"]])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_router_pool_follows_healthy_workers(agent: ConsulAgentStandIn) -> None:
    """Two real gRPC servers register; one turns NOT_SERVING and leaves the router's pool."""
    servers: list[RunningServer] = [
        await start_server("127.0.0.1:0", lambda server: None, [SERVICE]) for _ in range(2)
    ]
    settings = fast_settings(agent)
    registrations = [
        register_service(
            name="modelyard-worker",
            bind_address="127.0.0.1:0",
            port=s.port,
            service_id=f"worker-{i}",
            grpc_service=SERVICE,
            settings=settings,
        )
        for i, s in enumerate(servers)
    ]
    pool = WorkerPool(["127.0.0.1:1"])  # static entries give way to Consul's set
    pool.start()
    discovery = start_discovery(settings, pool, registry_address="127.0.0.1:2")
    assert discovery is not None
    want = {f"127.0.0.1:{s.port}" for s in servers}
    try:
        await eventually(lambda: {h.address for h in pool.workers} == want)
        await servers[0].health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        await eventually(
            lambda: [h.address for h in pool.workers] == [f"127.0.0.1:{servers[1].port}"]
        )
        await registrations[1].close()  # deregistered: gone at once
        await eventually(lambda: pool.workers == [])
        await servers[0].health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await eventually(
            lambda: [h.address for h in pool.workers] == [f"127.0.0.1:{servers[0].port}"]
        )
    finally:
        await discovery.close()
        await pool.close()
        for r in registrations:
            await r.close()
        for s in servers:
            await s.server.stop(0)


def test_start_discovery_is_off_without_consul() -> None:
    from modelyard.discovery import DiscoverySettings

    assert (
        start_discovery(DiscoverySettings(address=""), WorkerPool([]), registry_address="") is None
    )


def test_instances_of_health_entries() -> None:
    entries = [
        {"Node": {"Address": "10.0.0.9"}, "Service": {"ID": "b", "Address": "", "Port": 2}},
        {
            "Node": {"Address": "10.0.0.9"},
            "Service": {"ID": "a", "Address": "h", "Port": 1, "Meta": {"device": "cuda"}},
        },
        {"Node": {}, "Service": {"ID": "c", "Address": "", "Port": 0}},
    ]
    got = instances_of(entries)
    assert [(i.service_id, i.address) for i in got] == [("a", "h:1"), ("b", "10.0.0.9:2")]
    assert got[0].meta == {"device": "cuda"}


def test_next_index_follows_consul_guidance() -> None:
    assert next_index(0, 12) == 12
    assert next_index(12, 12) == 12
    assert next_index(12, 5) == 0  # went backwards: start over
    assert next_index(12, 0) == 1  # never below 1


def test_static_instances() -> None:
    got = static_instances(["127.0.0.1:1", "h:2", "127.0.0.1:1"])
    assert [i.address for i in got] == ["127.0.0.1:1", "h:2"]
    with pytest.raises(ValueError):
        static_instances(["nope"])
