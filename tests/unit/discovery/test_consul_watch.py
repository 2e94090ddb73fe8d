"""The blocking-query watch and the router's pool following it, against the stand-in."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence

import consul
import pytest
from grpc_health.v1 import health_pb2

from modelyard.discovery import ServiceInstance
from modelyard.discovery import consul as consul_module
from modelyard.discovery.consul import register_service
from modelyard.discovery.static import static_instances
from modelyard.discovery.watch import ConsulWatch, instances_of, next_index
from modelyard.server import RunningServer, start_server
from router.discovery import start_discovery
from router.workers import WorkerPool
from tests.consul_agent import (
    MIN_DEREGISTER_AFTER_S,
    REAP_INTERVAL_S,
    ConsulAgentStandIn,
    _Check,
    due_for_reaping,
)
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


def test_standin_blocking_query_waits_for_a_change_or_the_wait(agent: ConsulAgentStandIn) -> None:
    """The stand-in's side (what the client tests below rely on), through raw py-consul."""
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


WORKERS_PATH = "/v1/health/service/modelyard-worker"


async def test_watch_uses_blocking_queries_with_the_last_index(agent: ConsulAgentStandIn) -> None:
    """The client, not the stand-in: each read carries the index the previous answer gave,
    and while nothing changes the agent holds that read instead of answering it."""
    seen: list[list[str]] = []

    async def on_change(instances: Sequence[ServiceInstance]) -> None:
        seen.append([i.service_id for i in instances])

    _register(agent, "w1", 1001)
    watch = ConsulWatch(fast_settings(agent, wait_s=30.0), "modelyard-worker", on_change)
    task = asyncio.create_task(watch.run())

    def held() -> bool:  # a blocking read (it sent an index) the agent has not answered
        return any(r.index > 0 and not r.done for r in agent.reads_of(WORKERS_PATH))

    try:
        await eventually(lambda: seen == [["w1"]])
        await eventually(held)  # the second read waits on the agent: nothing changed
        count = len(agent.reads_of(WORKERS_PATH))
        # While nothing changes no new read is made (a poller would ask every 50 ms).
        await asyncio.sleep(0.5)
        assert len(agent.reads_of(WORKERS_PATH)) == count
        await asyncio.to_thread(_register, agent, "w2", 1002)
        await eventually(lambda: seen[-1:] == [["w1", "w2"]])
        await eventually(lambda: len(agent.reads_of(WORKERS_PATH)) > count and held())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    reads = agent.reads_of(WORKERS_PATH)
    assert reads[0].index == 0  # the first read has no index to send
    for before, after in itertools.pairwise(reads):
        # One read at a time, each blocking on the index of the answer before it.
        assert before.done and after.index == before.returned > 0, [
            (r.index, r.returned) for r in reads
        ]
    assert all(r.wait_s == 30.0 for r in reads[1:])  # each blocking read asks for wait_s
    # One read to start, one answered by the change, one held again: a few, not dozens.
    assert len(reads) <= 4, [(r.index, r.returned) for r in reads]


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


async def test_after_a_forgetful_agent_restart_services_register_again_and_are_watched(
    agent: ConsulAgentStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent restarted without its data dir knows no services and starts from a lower
    index: the registration puts the service back, the router's pool follows the new agent."""
    # The registration checks every RESYNC_S (30 s) that the agent still knows it.
    monkeypatch.setattr(consul_module, "RESYNC_S", 0.1)
    server = await start_server("127.0.0.1:0", lambda server: None, [SERVICE])
    settings = fast_settings(agent)
    registration = register_service(
        name="modelyard-worker",
        bind_address="127.0.0.1:0",
        port=server.port,
        service_id="worker-0",
        grpc_service=SERVICE,
        settings=settings,
    )
    pool = WorkerPool([])
    pool.start()
    discovery = start_discovery(settings, pool, registry_address="")
    assert discovery is not None
    address = f"127.0.0.1:{server.port}"
    try:
        await eventually(lambda: [h.address for h in pool.workers] == [address])
        index_before = agent.state.index
        await asyncio.to_thread(agent.restart, forget=True)
        # The new agent started below the old index (registering again and the first
        # check run may climb back to it before we look, so compare where it started).
        assert agent.restarted_at_index < index_before
        await eventually(lambda: agent.service_ids() == ["worker-0"])  # registered again
        # The pool follows the new agent's set: a failing check on it is seen...
        await server.health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        await eventually(lambda: pool.workers == [])
        # ...and so is the recovery.
        await server.health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await eventually(lambda: [h.address for h in pool.workers] == [address])
    finally:
        await discovery.close()
        await pool.close()
        await registration.close()
        await server.server.stop(0)


def test_a_restart_with_state_keeps_services_and_one_without_forgets_them(
    agent: ConsulAgentStandIn,
) -> None:
    _register(agent, "w1", 1001)
    agent.restart(forget=False)
    assert agent.service_ids() == ["w1"]
    agent.restart(forget=True)
    assert agent.service_ids() == []
    assert consul.Consul(host=agent.host, port=agent.port).agent.services() == {}


def _critical(after: str, since: float) -> _Check:
    return _Check(
        check_id="service:w1",
        name="c",
        service_id="w1",
        service_name="modelyard-worker",
        kind="ttl",
        definition={"deregistercriticalserviceafter": after},
        critical_since=since,
    )


def test_deregister_critical_after_has_consuls_one_minute_minimum() -> None:
    assert MIN_DEREGISTER_AFTER_S == 60.0 and REAP_INTERVAL_S == 30.0
    short = _critical("1s", since=0.0)
    assert due_for_reaping([short], now=59.0) == []  # 1 s asked, 1 minute honoured
    assert due_for_reaping([short], now=61.0) == ["w1"]
    long = _critical("90s", since=0.0)
    assert due_for_reaping([long], now=89.0) == []
    assert due_for_reaping([long], now=91.0) == ["w1"]
    never = _critical("", since=0.0)
    assert due_for_reaping([never], now=1e6) == []
    passing = _critical("1s", since=0.0)
    passing.status = "passing"
    assert due_for_reaping([passing], now=1e6) == []


async def test_the_reaper_drops_a_service_left_critical() -> None:
    """A registration asking for 0.1 s on an agent whose minimum is scaled to 0.3 s and
    whose reaper runs every 0.1 s (Consul: 1 minute and 30 s)."""
    with ConsulAgentStandIn(min_deregister_after_s=0.3, reap_interval_s=0.1) as scaled:
        await asyncio.to_thread(
            consul.Consul(host=scaled.host, port=scaled.port).agent.service.register,
            "modelyard-worker",
            service_id="w1",
            address="127.0.0.1",
            port=1001,
            check={"TTL": "60s", "DeregisterCriticalServiceAfter": "100ms"},
        )
        assert scaled.checks_of("w1") == {"service:w1": "critical"}  # checks start critical
        await eventually(lambda: scaled.service_ids() == [])
        assert scaled.checks_of("w1") == {}


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
