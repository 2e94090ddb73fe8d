"""Chaos under load: while clients generate through the router, kill -9 a worker, freeze
one (SIGSTOP), cut live connections, kill -9 and restart the registry while writing to
it, and stop the Consul stand-in. Every request ends within its deadline plus a grace,
every failure carries a defined status a client can act on, the healthy part keeps
serving during each fault, no acknowledged registry write is lost, and the mesh serves
normally afterwards without a restart."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.robustness.chaos_mesh import DEADLINE_S, ChaosMesh, SteadyLoad, sim_model, summary

pytestmark = pytest.mark.integration

GRACE_S = 2.0
# What a client may see when a fault costs its request: all retryable or a deadline.
DEFINED = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[ChaosMesh]:
    mesh = ChaosMesh(tmp_path)
    try:
        yield mesh.start()
    finally:
        mesh.stop()


class Writer:
    """Registers new versions back to back; remembers the ones the registry acknowledged."""

    def __init__(self, mesh: ChaosMesh) -> None:
        self.mesh, self.acknowledged, self.refused = mesh, set[str](), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                self.mesh.register(sim_model(self.mesh.artifact, "chaos-writes", str(n)), 2)
            except grpc.RpcError:
                self.refused += 1
                self._stop.wait(0.1)  # the registry is down: a client would back off too
                continue
            self.acknowledged.add(str(n))


def test_the_mesh_rides_out_faults_under_load(mesh: ChaosMesh) -> None:
    with SteadyLoad(mesh.router_address) as load:
        load.wait(lambda: mesh.healthy_workers() == 3, "the router sees three workers")
        with load.during("baseline"):
            pass
        with load.during("kill -9 worker-1"):
            mesh.kill("worker-1")
        mesh.start_worker(1).wait_healthy(120)
        load.wait(lambda: mesh.healthy_workers() == 3, "worker-1 back in the router's set")
        with load.during("SIGSTOP worker-2"):
            mesh.signal("worker-2", signal.SIGSTOP)
            load.wait(lambda: mesh.healthy_workers() == 2, "the frozen worker left the set")
        mesh.signal("worker-2", signal.SIGCONT)
        with load.during("connections cut mid-stream"):
            for _ in range(3):  # each while a worker decodes a request the router relays
                load.wait(lambda: mesh.running_sequences() > 0, "a stream in flight")
                assert mesh.cut_connections() > 0
        with Writer(mesh) as writer, load.during("registry kill -9 and restart"):
            load.wait(lambda: len(writer.acknowledged) >= 3, "writes before the crash")
            mesh.kill("registry")
            mesh.start_registry().wait_healthy(120)
            before = len(writer.acknowledged)
            load.wait(lambda: len(writer.acknowledged) > before, "writes after the restart")
        with load.during("Consul stand-in down"):
            mesh.agent.stop()
            load.wait(lambda: len(load.of("Consul stand-in down")) >= 8, "traffic without Consul")
            mesh.agent.start()
        load.wait(lambda: mesh.healthy_workers() == 3, "all three workers serving again")
        with load.during("after", ended=12):
            pass
    table = summary(load.ended)
    print("\nchaos under load (requests by status per phase):")
    for phase, counts in table.items():
        print(f"  {phase:32} {counts}")
    for what in sorted({(e.phase, e.code, e.details[:160]) for e in load.ended if e.code != "OK"}):
        print("  failed:", *what)

    for e in load.ended:
        assert e.seconds <= DEADLINE_S + GRACE_S, f"{e} outlived its deadline"
        assert e.code in DEFINED, f"{e}: not a status a client can act on"
        assert "Traceback" not in e.details and "Error:" not in e.details, e
    for phase, counts in table.items():
        assert counts.get("OK", 0) > 0, f"nothing served during {phase!r}: {counts}"
    assert writer.acknowledged <= mesh.versions("chaos-writes"), "an acknowledged write was lost"
    assert set(table["after"]) == {"OK"}, f"the mesh did not recover: {table['after']}"
