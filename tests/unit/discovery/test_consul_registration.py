"""Registration through the real py-consul client against the Consul stand-in."""

from __future__ import annotations

import asyncio

import consul
import pytest
from grpc_health.v1 import health_pb2

from modelyard import __version__
from modelyard.discovery.consul import ConsulRegistration, advertised_host, register_service
from modelyard.discovery.settings import DiscoverySettings
from modelyard.server import RunningServer
from tests.consul_agent import ConsulAgentStandIn, parse_duration
from tests.unit.discovery.conftest import SERVICE, eventually, fast_settings


async def test_off_without_address() -> None:
    registration = register_service(
        name="modelyard-worker",
        bind_address="127.0.0.1:1",
        port=1,
        grpc_service=SERVICE,
        settings=DiscoverySettings(address=""),
    )
    assert not isinstance(registration, ConsulRegistration)
    await registration.close()


async def test_registers_with_grpc_check_then_deregisters(
    agent: ConsulAgentStandIn, grpc_server: RunningServer
) -> None:
    registration = register_service(
        name="modelyard-worker",
        bind_address="127.0.0.1:0",
        port=grpc_server.port,
        service_id="worker-a",
        grpc_service=SERVICE,
        meta={"engines": "llama_cpp", "device": "cpu"},
        settings=fast_settings(agent),
    )
    assert isinstance(registration, ConsulRegistration)
    await eventually(lambda: agent.service_ids() == ["worker-a"])
    service = agent.state.services["worker-a"]
    assert service["Service"] == "modelyard-worker"
    assert (service["Address"], service["Port"]) == ("127.0.0.1", grpc_server.port)
    assert service["Meta"] == {"version": __version__, "engines": "llama_cpp", "device": "cpu"}
    check = agent.state.checks["service:worker-a"]
    assert check.definition["grpc"] == f"127.0.0.1:{grpc_server.port}/{SERVICE}"
    # The stand-in really runs the gRPC health check: it turns passing.
    await eventually(lambda: agent.checks_of("worker-a") == {"service:worker-a": "passing"})

    await registration.close()
    assert agent.service_ids() == []


async def test_a_deregistered_service_keeps_serving_a_moment_before_it_stops(
    agent: ConsulAgentStandIn, grpc_server: RunningServer
) -> None:
    """Watchers drop it before its server stops taking calls: a call that reaches a
    stopping gRPC server is cancelled (what bench.scale_mesh's churn met)."""
    registration = register_service(
        name="modelyard-worker",
        bind_address="127.0.0.1:0",
        port=grpc_server.port,
        service_id="worker-a",
        grpc_service=SERVICE,
        settings=fast_settings(agent, deregister_wait_s=0.5),
    )
    assert isinstance(registration, ConsulRegistration)
    await eventually(lambda: agent.service_ids() == ["worker-a"])
    await eventually(registration.registered.is_set)
    closing = asyncio.ensure_future(registration.close())
    await eventually(lambda: agent.service_ids() == [])
    still_draining = not closing.done()
    await closing

    assert still_draining


async def test_check_follows_grpc_health(
    agent: ConsulAgentStandIn, grpc_server: RunningServer
) -> None:
    registration = register_service(
        name="modelyard-registry",
        bind_address="127.0.0.1:0",
        port=grpc_server.port,
        grpc_service=SERVICE,
        settings=fast_settings(agent),
    )
    try:
        sid = f"modelyard-registry-127.0.0.1-{grpc_server.port}"
        await eventually(lambda: agent.checks_of(sid).get(f"service:{sid}") == "passing")
        await grpc_server.health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        await eventually(lambda: agent.checks_of(sid).get(f"service:{sid}") == "critical")
    finally:
        await registration.close()


async def test_registers_again_after_the_agent_forgets(
    agent: ConsulAgentStandIn, grpc_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("modelyard.discovery.consul.RESYNC_S", 0.05)
    registration = register_service(
        name="modelyard-router",
        bind_address="127.0.0.1:0",
        port=grpc_server.port,
        service_id="router-1",
        grpc_service=SERVICE,
        settings=fast_settings(agent),
    )
    try:
        await eventually(lambda: agent.service_ids() == ["router-1"])
        c = consul.Consul(host=agent.host, port=agent.port)
        assert c.agent.service.deregister("router-1")
        await eventually(lambda: agent.service_ids() == ["router-1"])
    finally:
        await registration.close()


async def test_acl_token_is_sent_and_required(grpc_server: RunningServer) -> None:
    with ConsulAgentStandIn(acl_tokens={"s3cret"}) as agent:
        anonymous = register_service(
            name="modelyard-worker",
            bind_address="127.0.0.1:0",
            port=grpc_server.port,
            service_id="anon",
            grpc_service=SERVICE,
            settings=fast_settings(agent),
        )
        with_token = register_service(
            name="modelyard-worker",
            bind_address="127.0.0.1:0",
            port=grpc_server.port,
            service_id="tok",
            grpc_service=SERVICE,
            settings=fast_settings(agent, token="s3cret"),
        )
        try:
            await eventually(lambda: agent.service_ids() == ["tok"])
            assert ("PUT", "/v1/agent/service/register", "s3cret") in agent.requests
            assert ("PUT", "/v1/agent/service/register", "") in agent.requests
            assert "anon" not in agent.service_ids()
            wrong = consul.Consul(host=agent.host, port=agent.port, token="nope")
            with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
                wrong.agent.services()
            # Anonymous reads are filtered, not refused.
            _, nodes = consul.Consul(host=agent.host, port=agent.port).health.service(
                "modelyard-worker"
            )
            assert nodes == []
        finally:
            await anonymous.close()
            await with_token.close()
        assert agent.service_ids() == []


def test_advertised_host() -> None:
    assert advertised_host(DiscoverySettings(), "10.1.2.3:50051") == "10.1.2.3"
    assert advertised_host(DiscoverySettings(advertise_host="w1"), "0.0.0.0:1") == "w1"
    assert advertised_host(DiscoverySettings(), "0.0.0.0:50051") not in ("", "0.0.0.0")


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_CONSUL_ADDRESS", "consul:8501")
    monkeypatch.setenv("MODELYARD_CONSUL_TOKEN", "t")
    monkeypatch.setenv("MODELYARD_CONSUL_SCHEME", "https")
    monkeypatch.setenv("MODELYARD_CONSUL_CA_FILE", "/ca.pem")
    settings = DiscoverySettings()
    assert settings.enabled and settings.token == "t" and settings.scheme == "https"
    assert settings.ca_file == "/ca.pem"


def test_go_durations() -> None:
    assert parse_duration("1m30s") == 90
    assert parse_duration("250ms") == 0.25
    with pytest.raises(ValueError):
        parse_duration("10 seconds")
