"""RouterSettings: defaults, and worker lists from the environment in both spellings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

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
