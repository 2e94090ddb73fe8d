"""Ten times the mesh's measured capacity through the router (sim engine): every request
ends, served or RESOURCE_EXHAUSTED with a retry hint, within its deadline plus a grace;
RESOURCE_EXHAUSTED does appear (the router sheds instead of queueing); every service
stays under its RSS bound and the mesh serves normally right after.

The router admits `MAX_IN_FLIGHT` generations (tests/robustness/overload.py, set on the
shared mesh in conftest.py). Latency ratios are the bench's business
(bench/overload_bench.py), not a CI assert.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.robustness.conftest import FIGURES
from tests.robustness.invariants import mesh_trouble
from tests.robustness.overload import (
    DEADLINE_S,
    LOAD_MODEL,
    SEQUENCES,
    drive,
    measure_capacity,
    p99,
    register_load_model,
)
from tests.robustness.sim_mesh import SimMesh, wait_served

pytestmark = pytest.mark.integration

FACTOR = 10
CAPACITY_S = 5.0
LOAD_S = 60.0  # the issue asks for 60 s at 10x
GRACE_S = 2.0


def test_ten_times_capacity_is_shed_at_once_and_the_mesh_recovers(fuzz_mesh: SimMesh) -> None:
    register_load_model(fuzz_mesh)
    address = fuzz_mesh.local.router_address
    wait_served(address, LOAD_MODEL)
    capacity = asyncio.run(measure_capacity(address, CAPACITY_S))
    assert capacity.counts() == {"OK": len(capacity.ended)}, capacity.counts()

    overload = asyncio.run(drive(address, FACTOR * SEQUENCES, LOAD_S))
    counts = overload.counts()
    FIGURES["overload"] = (
        f"capacity {capacity.throughput:.1f} req/s at {SEQUENCES} clients; "
        f"{FACTOR * SEQUENCES} clients for {overload.seconds:.0f} s: {dict(counts)}, "
        f"served {overload.throughput:.1f} req/s, p99 served {p99(overload.served()):.3f} s "
        f"(unloaded {p99(capacity.served()):.3f} s)"
    )
    late = [e for e in overload.ended if e.seconds > DEADLINE_S + GRACE_S]
    assert not late, f"{len(late)} requests ended past deadline + grace: {late[:3]}"
    assert set(counts) <= {"OK", "RESOURCE_EXHAUSTED"}, counts
    shed = [e for e in overload.ended if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert shed, "no request was shed at ten times capacity"
    assert all(e.retry_hint for e in shed), [e.details for e in shed if not e.retry_hint][:3]
    assert counts["OK"] > 0
    assert not mesh_trouble(fuzz_mesh), mesh_trouble(fuzz_mesh)
