"""WorkerSettings: environment, defaults derived from the bound port."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.config import WorkerSettings


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
