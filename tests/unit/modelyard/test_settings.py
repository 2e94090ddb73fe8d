"""Root settings: nested models read the flat MODELYARD_<SERVICE>_* names the chart uses."""

from __future__ import annotations

import pytest
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modelyard.settings import ServiceSettings, env_table


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_DEMO_")

    max_queued_requests: int = Field(default=64, description="Requests that may wait.")
    admin_token: str = Field(default="", description="Needed by writes.")


def test_nested_tls_and_flat_fields_share_one_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_DEMO_TLS_CERT_FILE", "/c.crt")
    monkeypatch.setenv("MODELYARD_DEMO_TLS_KEY_FILE", "/c.key")
    monkeypatch.setenv("MODELYARD_DEMO_TLS_MTLS", "true")
    monkeypatch.setenv("MODELYARD_DEMO_MAX_QUEUED_REQUESTS", "7")
    monkeypatch.setenv("MODELYARD_DEMO_ADMIN_TOKEN", "t")
    monkeypatch.setenv("MODELYARD_OTHER_TLS_CERT_FILE", "/not-mine.crt")
    settings = DemoSettings()
    assert (settings.tls.cert_file, settings.tls.key_file, settings.tls.mtls) == (
        "/c.crt",
        "/c.key",
        True,
    )
    assert settings.tls.enabled
    assert (settings.max_queued_requests, settings.admin_token) == (7, "t")


def test_defaults_are_plaintext() -> None:
    settings = DemoSettings()
    assert not settings.tls.enabled and not settings.tls.client_enabled


def test_env_table_lists_every_variable_nested_ones_flattened() -> None:
    rows = {name: (default, doc) for name, default, doc in env_table(DemoSettings)}
    assert rows["MODELYARD_DEMO_MAX_QUEUED_REQUESTS"] == ("64", "Requests that may wait.")
    assert "MODELYARD_DEMO_TLS_CERT_FILE" in rows
    assert "MODELYARD_DEMO_TLS_MTLS" in rows
    assert "MODELYARD_DEMO_TLS" not in rows
