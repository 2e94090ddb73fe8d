"""Chaos under load: while clients generate through the router, kill -9 a worker, freeze
one (SIGSTOP), cut live connections, kill -9 and restart the registry while writing to
it, and stop the Consul stand-in (the scenario: chaos_faults.run_faults). Every request
ends within its deadline plus a grace, every failure carries a defined status a client
can act on and no exception text, the healthy part keeps serving during each fault, no
acknowledged registry write is lost, and the mesh serves normally afterwards without a
restart. The same scenario with longer holds is `python -m bench.chaos_bench`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.robustness.chaos_faults import markdown, report, run_faults
from tests.robustness.chaos_mesh import DEADLINE_S, ChaosMesh, SteadyLoad

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


def test_the_mesh_rides_out_faults_under_load(mesh: ChaosMesh) -> None:
    with SteadyLoad(mesh.router_address) as load:
        writer = run_faults(mesh, load)
    rows = report(load)
    print("\n" + markdown(rows))
    for failure in sorted(
        {(e.phase, e.code, e.details[:160]) for e in load.ended if e.code != "OK"}
    ):
        print("  failed:", *failure)

    for e in load.ended:
        assert e.seconds <= DEADLINE_S + GRACE_S, f"{e} outlived its deadline"
        assert e.code in DEFINED, f"{e}: not a status a client can act on"
        assert "Traceback" not in e.details and "Error" not in e.details, e
    faults = [r for r in rows if not r.phase.endswith("recovering") and r.phase != "starting"]
    assert len(faults) == 7
    for row in faults:
        assert row.served > 0, f"nothing served during {row.phase!r}: {row}"
    assert writer.acknowledged <= mesh.versions("chaos-writes"), "an acknowledged write was lost"
    after = next(r for r in rows if r.phase == "after")
    assert not after.failed, f"the mesh did not recover: {after}"
