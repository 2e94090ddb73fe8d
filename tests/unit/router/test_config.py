"""RouterSettings: defaults, and worker lists from the environment in both spellings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from router.auth import router_gate
from router.config import RouterSettings


def test_defaults() -> None:
    settings = RouterSettings()

    assert settings.address == "127.0.0.1:50050"
    assert settings.registry_address == "127.0.0.1:50051"
    assert settings.workers == []
    assert settings.catalog_ttl_s == 5.0


@pytest.mark.parametrize(
    "value",
    ["127.0.0.1:1, 127.0.0.1:2", '["127.0.0.1:1", "127.0.0.1:2"]'],
    ids=["comma-separated", "json"],
)
def test_workers_from_env(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MODELYARD_ROUTER_WORKERS", value)

    assert RouterSettings().workers == ["127.0.0.1:1", "127.0.0.1:2"]


def test_workers_from_flags_and_bad_address() -> None:
    assert RouterSettings(workers=["h:1"]).workers == ["h:1"]
    with pytest.raises(ValidationError, match="not host:port"):
        RouterSettings(workers=["nohost"])


def test_every_field_is_described() -> None:
    # The descriptions are the CLI's --help text.
    assert all(f.description for f in RouterSettings.model_fields.values())


def test_one_root_object_reads_auth_and_tls_from_their_old_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELYARD_ROUTER_API_KEYS", "k1, k2")
    monkeypatch.setenv("MODELYARD_ROUTER_WORKER_API_KEY", "to-workers")
    monkeypatch.setenv("MODELYARD_ROUTER_TLS_CERT_FILE", "/certs/router.pem")
    monkeypatch.setenv("MODELYARD_ROUTER_TLS_MTLS", "true")

    settings = RouterSettings()

    assert settings.api_keys == ["k1", "k2"]
    assert settings.worker_api_key == "to-workers"
    assert settings.tls.cert_file == "/certs/router.pem" and settings.tls.mtls


def test_the_gate_follows_the_api_keys() -> None:
    assert not router_gate([]).enabled
    gate = router_gate(["k1"])
    method = "/modelyard.v1.RouterService/Generate"
    assert gate.error_for(method, [("authorization", "Bearer k1")]) is None
    assert gate.error_for(method, [("authorization", "Bearer k2")]) is not None
    assert gate.error_for(method, []) is not None
    assert gate.error_for("/grpc.health.v1.Health/Check", []) is None
