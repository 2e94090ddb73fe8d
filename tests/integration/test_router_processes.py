"""`modelyard router serve --processes N`: siblings share the port and the traffic, stop
together, and one dying stops them all. Real router processes on loopback, a sim worker."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import grpc

from modelyard.bearer import bearer_metadata
from modelyard.local_mesh import free_port, port_is_free, spawn_service
from modelyard.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.integration.conftest import until
from tests.robustness.sim_mesh import CLIENT_KEY, start_sim_mesh

# Connections over the siblings: the kernel hashes each to one of them, so with 24 the
# chance that one sibling gets none is 2 * 2**-24.
CONNECTIONS = 24


def _metrics_ports() -> int:
    """A port p with p + 1 free too: sibling i serves /metrics on p + i."""
    for _ in range(100):
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port
    raise AssertionError("no two adjacent free ports")


def _siblings(supervisor: int) -> list[int]:
    """The supervisor's router processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    out = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            out.append(pid)
    return out


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, not yet reaped by its parent


def _wait_gone(pids: list[int], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if not _gone(p)]}"
        time.sleep(0.1)


def _listening(log: Path, siblings: int) -> bool:
    return log.read_text(errors="replace").count("router listening on") >= siblings


def _served_ok(port: int) -> float:
    """Requests this sibling finished OK, from its own /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelyard_router_requests_total{") and 'code="OK"' in line
    )


def test_siblings_share_the_port_and_stop_together(tmp_path: Path) -> None:
    metrics = _metrics_ports()
    env = {"MODELYARD_ROUTER_PROCESSES": "2", "MODELYARD_ROUTER_METRICS_PORT": str(metrics)}
    mesh = start_sim_mesh(tmp_path, env=env, http=True)  # both ports shared
    try:
        router = mesh.local.service("router")
        siblings = _siblings(router.process.pid)
        assert len(siblings) == 2
        # The router answers health as soon as one sibling does, and spawned interpreters
        # start slowly on a loaded host: wait for both before reading their counters.
        until(lambda: _listening(router.log_path, 2), "both siblings listen", timeout_s=60)
        warm = _served_ok(metrics) + _served_ok(metrics + 1)  # start_sim_mesh's warm-up
        request = router_pb2.CompleteRequest(
            model=mesh.model.name, prompt="hi", sampling=common_pb2.SamplingParams(max_tokens=2)
        )
        for _ in range(CONNECTIONS):
            # A channel of its own (no shared subchannel): a new connection each time.
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(mesh.local.router_address, options=options) as channel:
                reply = router_pb2_grpc.RouterServiceStub(channel).Complete(
                    request, timeout=30, metadata=bearer_metadata(CLIENT_KEY)
                )
                assert reply.finished.usage.output_tokens == 2
        front = f"http://{mesh.local.router_http_address}/health"
        for _ in range(4):
            with urllib.request.urlopen(front, timeout=10) as health:
                assert health.status == 200
        served = [_served_ok(metrics), _served_ok(metrics + 1)]
        assert all(n > 0 for n in served), served
        assert sum(served) == warm + CONNECTIONS
    finally:
        mesh.stop()
    assert router.process.returncode == 0, router.log_tail()
    _wait_gone(siblings)


def test_a_sibling_that_dies_stops_the_others(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    args = ["router", "serve", "--processes", "2", "--address", address]
    # The registry is not needed to serve health: the router starts without it.
    args += ["--registry-address", "127.0.0.1:1"]
    router = spawn_service("router", args, address, tmp_path / "router.log")
    try:
        router.wait_healthy()
        siblings = _siblings(router.process.pid)
        assert len(siblings) == 2
        os.kill(siblings[1], signal.SIGKILL)
        code = router.process.wait(timeout=60)
        assert code != 0
        assert "router-1 exited" in router.log_tail(), router.log_tail()
        _wait_gone(siblings)
    finally:
        router.stop()


def test_a_port_in_use_is_refused_before_any_sibling_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        args = ["router", "serve", "--processes", "2", "--address", address]
        router = spawn_service("router", args, address, tmp_path / "router.log")
        code = router.process.wait(timeout=60)
    assert code != 0
    log = router.log_tail()
    assert f"cannot bind {address}" in log
    assert "processes on" not in log  # the supervisor's line once its siblings started
