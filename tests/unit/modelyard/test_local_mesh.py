"""LocalMesh's start order: the router starts only once registry and workers answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from modelyard import local_mesh
from modelyard.local_mesh import LocalMesh, ServiceFailed


class _FakeService:
    def __init__(self, name: str, events: list[str], fail: str = "") -> None:
        self.name = name
        self._events = events
        self._fail = fail

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        if self.name == self._fail:
            raise ServiceFailed(f"{self.name} exited")
        self._events.append(f"healthy {self.name}")

    def wait_listening(self, address: str, timeout_s: float = 60.0) -> None:
        self._events.append(f"listening {self.name}")

    def stop(self, timeout_s: float = 15.0) -> int:
        self._events.append(f"stop {self.name}")
        return 0


def _fake_spawn(events: list[str], fail: str = "") -> Any:
    def spawn(
        name: str,
        args: Sequence[str],
        address: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> _FakeService:
        events.append(f"spawn {name}")
        return _FakeService(name, events, fail)

    return spawn


def test_the_router_starts_after_registry_and_workers_are_healthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    monkeypatch.setattr(local_mesh, "spawn_service", _fake_spawn(events))
    mesh = LocalMesh(data_dir=tmp_path, worker_ports=(0, 0), router_http_port=0)
    mesh.start()
    router = events.index("spawn router")
    for name in ("registry", "worker-0", "worker-1"):
        # A router started beside them backs off its channels and fails the first requests.
        assert events.index(f"healthy {name}") < router, events
    assert events[router:] == ["spawn router", "healthy router", "listening router"]
    mesh.stop()
    assert events[-4:] == ["stop router", "stop worker-1", "stop worker-0", "stop registry"]


def test_a_service_that_fails_to_start_stops_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    monkeypatch.setattr(local_mesh, "spawn_service", _fake_spawn(events, fail="worker-0"))
    mesh = LocalMesh(data_dir=tmp_path)
    with pytest.raises(ServiceFailed):
        mesh.start()
    assert "spawn router" not in events
    assert events[-2:] == ["stop worker-0", "stop registry"]
    assert mesh.services == []
