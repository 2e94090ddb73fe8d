"""The faults of the chaos scenario, in order, and the report of how requests fared.

One scenario for two readers: tests/robustness/test_chaos.py asserts on it in CI,
bench/chaos_bench.py runs it with longer holds and writes the report.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass

import grpc

from tests.robustness.chaos_mesh import ChaosMesh, Ended, SteadyLoad, sim_model


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


def run_faults(mesh: ChaosMesh, load: SteadyLoad, hold_s: float = 0.0) -> Writer:
    """Each fault while `load` runs, each held at least `hold_s`; returns the registry
    writer, whose acknowledged versions must all be in the registry afterwards."""
    load.wait(lambda: mesh.healthy_workers() == 3, "the router sees three workers")
    with load.during("baseline"):
        time.sleep(hold_s)
    with load.during("kill -9 worker-1"):
        mesh.kill("worker-1")
        time.sleep(hold_s)
    mesh.start_worker(1).wait_healthy(120)
    load.wait(lambda: mesh.healthy_workers() == 3, "worker-1 back in the router's set")
    with load.during("SIGSTOP worker-2"):
        mesh.signal("worker-2", signal.SIGSTOP)
        load.wait(lambda: mesh.healthy_workers() == 2, "the frozen worker left the set")
        time.sleep(hold_s)
    mesh.signal("worker-2", signal.SIGCONT)
    with load.during("connections cut mid-stream"):
        for _ in range(3):  # each while a worker decodes a request the router relays
            load.wait(lambda: mesh.running_sequences() > 0, "a stream in flight")
            assert mesh.cut_connections() > 0
        # Every connection was cut: serving again is the part to see in this phase.
        phase = load.phase
        load.wait(lambda: any(e.code == "OK" for e in load.of(phase)), "a request served")
    with Writer(mesh) as writer, load.during("registry kill -9 and restart"):
        load.wait(lambda: len(writer.acknowledged) >= 3, "writes before the crash")
        mesh.kill("registry")
        time.sleep(hold_s)
        mesh.start_registry().wait_healthy(120)
        before = len(writer.acknowledged)
        load.wait(lambda: len(writer.acknowledged) > before, "writes after the restart")
    with load.during("Consul stand-in down"):
        mesh.agent.stop()
        load.wait(lambda: len(load.of("Consul stand-in down")) >= 8, "traffic without Consul")
        time.sleep(hold_s)
        mesh.agent.start()
    load.wait(lambda: mesh.healthy_workers() == 3, "all three workers serving again")
    with load.during("after", ended=12):
        time.sleep(hold_s)
    return writer


@dataclass(frozen=True)
class PhaseReport:
    phase: str
    seconds: float
    served: int
    retried: int  # served by a later attempt than the first
    failed: dict[str, int]  # status -> count

    @property
    def served_per_s(self) -> float:
        return self.served / self.seconds if self.seconds else 0.0


def report(load: SteadyLoad) -> list[PhaseReport]:
    """Per phase, in the order they ran: served, retried, failed by status."""
    rows: list[PhaseReport] = []
    for phase, seconds in load.phases:
        ended: list[Ended] = load.of(phase)
        failed: dict[str, int] = {}
        for e in ended:
            if e.code != "OK":
                failed[e.code] = failed.get(e.code, 0) + 1
        ok = [e for e in ended if e.code == "OK"]
        rows.append(PhaseReport(phase, seconds, len(ok), sum(e.attempt > 1 for e in ok), failed))
    return rows


def failures(load: SteadyLoad, per_phase: int = 3) -> list[str]:
    """A few distinct failure details per phase."""
    seen: dict[tuple[str, str], None] = {}
    for e in load.ended:
        if e.code != "OK" and sum(p == e.phase for p, _ in seen) < per_phase:
            seen.setdefault((e.phase, f"{e.code}: {e.details[:200]}"), None)
    return [f"- {phase}: {detail}" for phase, detail in seen]


def markdown(rows: list[PhaseReport]) -> str:
    lines = [
        "| phase | seconds | served | served/s | retried | failed (status: count) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        failed = ", ".join(f"{k}: {v}" for k, v in sorted(r.failed.items())) or "0"
        lines.append(
            f"| {r.phase} | {r.seconds:.1f} | {r.served} | {r.served_per_s:.1f} "
            f"| {r.retried} | {failed} |"
        )
    return "\n".join(lines)
