"""LocalMesh's start order: the router starts only once registry and workers answer."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from modelyard import local_mesh
from modelyard.local_mesh import LocalMesh, ServiceFailed, free_port


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


PARENT = """
import sys, time
from pathlib import Path
from modelyard.local_mesh import free_port, spawn_service
port = free_port()
data = Path(sys.argv[1])
url = f"sqlite+aiosqlite:///{data / 'registry.db'}"
service = spawn_service(
    "registry", ["registry", "serve", "--address", f"127.0.0.1:{port}", "--database-url", url],
    f"127.0.0.1:{port}", data / "registry.log",
)
service.wait_healthy(60)
print(service.process.pid, flush=True)
time.sleep(600)
"""


def test_a_spawned_service_goes_when_its_parent_is_killed(tmp_path: Path) -> None:
    """`up` or a test killed with SIGKILL leaves no service behind: the child asked the
    kernel for SIGTERM on its parent's death (from its own start, so spawning needs no
    Python code between fork and exec)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 30
    while _alive(child):
        assert time.monotonic() < deadline, "the service outlived its killed parent"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (reaped by init soon) counts as gone.
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


def test_direct_streams_give_router_and_workers_a_ticket_key_and_reporter_token(
    tmp_path: Path,
) -> None:
    from modelyard.tickets import TicketSigner, TicketVerifier

    plain = LocalMesh(data_dir=tmp_path, env={"A": "1"})
    assert plain._service_envs() == ({"A": "1"}, {"A": "1"})  # off by default: nothing added
    assert not (tmp_path / "tickets").exists()

    mesh = LocalMesh(data_dir=tmp_path, env={"A": "1"}, direct_streams=True)
    router, worker = mesh._service_envs()
    assert router["A"] == worker["A"] == "1"
    for path in (tmp_path / "tickets").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    signer = TicketSigner.from_setting(router["MODELYARD_ROUTER_TICKET_KEY"])
    verifier = TicketVerifier.from_files([worker["MODELYARD_WORKER_TICKET_KEYS"]])
    assert verifier.read(signer.issue("r1", "m@1")).request_id == "r1"
    assert "MODELYARD_ROUTER_TICKET_KEY" not in worker  # the private key is the router's
    routers = json.loads(worker["MODELYARD_WORKER_OUTCOME_ROUTERS"])
    assert routers == {router["MODELYARD_ROUTER_ROUTER_ID"]: mesh.router_address}
    token = worker["MODELYARD_WORKER_OUTCOME_TOKEN"]
    assert router["MODELYARD_ROUTER_OUTCOME_REPORTER_TOKENS"] == f"workers:{token}"
    assert len(token) >= 32


def test_free_ports_lie_below_the_ephemeral_range_and_are_not_handed_out_twice() -> None:
    # A port from the ephemeral range may become an outgoing connection's source port before
    # the service binds it: CI saw "Address already in use" on a metrics port that way.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 <= port < low for port in ports)


def test_free_port_skips_a_port_something_listens_on() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert not local_mesh._bindable("127.0.0.1", taken)
        assert local_mesh._bindable("127.0.0.1", free_port())
