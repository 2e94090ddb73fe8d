"""WorkerSettings: environment, defaults derived from the bound port."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.artifacts import ArtifactSettings
from worker.config import WorkerSettings
from worker.main import build_manager


def test_settings_come_from_modelyard_worker_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_WORKER_THREADS", "3")
    monkeypatch.setenv("MODELYARD_WORKER_METRICS_PORT", "9400")
    settings = WorkerSettings()
    assert (settings.threads, settings.metrics_port) == (3, 9400)
    assert settings.address == "127.0.0.1:50061"
    assert settings.context_length == 4096


def test_the_worker_id_defaults_to_the_bound_port() -> None:
    assert WorkerSettings().resolved_worker_id(50123) == "worker-50123"
    assert WorkerSettings(worker_id="gpu-7").resolved_worker_id(50123) == "gpu-7"


def test_the_advertised_address_uses_the_bound_port() -> None:
    assert WorkerSettings(address="127.0.0.1:0").resolved_address(4242) == "127.0.0.1:4242"
    assert WorkerSettings(advertise_address="w1:9").resolved_address(4242) == "w1:9"
    assert not WorkerSettings(address="0.0.0.0:0").resolved_address(1).startswith("0.0.0.0")


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        WorkerSettings(threads=0)


def test_one_settings_object_reads_auth_tls_and_artifact_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELYARD_WORKER_ADMIN_TOKEN", "adm")
    monkeypatch.setenv("MODELYARD_WORKER_API_KEY", "key")
    monkeypatch.setenv("MODELYARD_WORKER_TLS_CERT_FILE", "/c.crt")
    monkeypatch.setenv("MODELYARD_WORKER_TLS_MTLS", "true")
    monkeypatch.setenv("MODELYARD_ARTIFACTS_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setenv("MODELYARD_ARTIFACTS_MAX_CACHE_BYTES", "12345")
    monkeypatch.setenv("MODELYARD_ARTIFACTS_S3_ENDPOINT_URL", "http://minio:9000")
    settings = WorkerSettings()
    assert (settings.admin_token, settings.api_key) == ("adm", "key")
    assert settings.tls.cert_file == "/c.crt" and settings.tls.mtls
    assert settings.artifacts.cache_dir == tmp_path / "env-cache"
    assert settings.artifacts.max_cache_bytes == 12345
    assert settings.artifacts.s3_endpoint_url == "http://minio:9000"


def test_the_artifact_store_is_built_from_the_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELYARD_WORKER_ARTIFACTS_CACHE_DIR", str(tmp_path / "prefixed"))
    manager = build_manager(WorkerSettings(), engines={})
    assert manager.loader.store.objects == tmp_path / "prefixed" / "objects"
    direct = WorkerSettings(artifacts=ArtifactSettings(max_cache_bytes=7))
    assert build_manager(direct, engines={}).loader.store.settings.max_cache_bytes == 7
