"""Consul's gRPC health check speaks TLS when the service does."""

from __future__ import annotations

from modelyard.discovery.consul import ServiceSpec
from modelyard.discovery.settings import DiscoverySettings


def test_consul_check_uses_tls_when_the_service_does() -> None:
    spec = ServiceSpec("modelyard-worker", "w", "10.0.0.1", 50052, "svc", grpc_use_tls=True)
    assert spec.check(DiscoverySettings())["GRPCUseTLS"] is True
    assert ServiceSpec("r", "r", "h", 1, "svc").check(DiscoverySettings())["GRPCUseTLS"] is False


def test_consul_check_verifies_the_mesh_name_not_the_dialled_ip() -> None:
    spec = ServiceSpec(
        "modelyard-worker",
        "w",
        "10.0.0.1",
        50052,
        "svc",
        grpc_use_tls=True,
        tls_server_name="mesh.prod.modelyard",
    )
    assert spec.check(DiscoverySettings())["TLSServerName"] == "mesh.prod.modelyard"
    plaintext = ServiceSpec("r", "r", "h", 1, "svc", tls_server_name="mesh.prod.modelyard")
    assert "TLSServerName" not in plaintext.check(DiscoverySettings())
