"""One sim mesh for the fuzz and overload modules, and what they counted.

The mesh is session-scoped rather than per module: it takes 40-70 s to start on a loaded
2-core machine, and under `--random-order-bucket=global` a module-scoped one would be
started again each time these tests interleave with others. Each test checks the mesh's
health and RSS itself when it ends, so none relies on running last. The terminal summary
prints the number of fuzz cases, their outcomes and the overload figures.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.robustness.overload import ROUTER_ENV
from tests.robustness.sim_mesh import SimMesh, start_sim_mesh

CASES: Counter[str] = Counter()  # per RPC or endpoint
CODES: Counter[str] = Counter()  # outcomes by status (gRPC code or HTTP status)
FIGURES: dict[str, str] = {}  # what other robustness tests measured, for the summary


@pytest.fixture(scope="session")
def fuzz_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimMesh]:
    # The overload test shares this mesh (a second one costs another ~40 s): its router
    # admission is set here. The fuzz sends one request at a time, far under it.
    # The rollout test (test_rollout_mesh.py) shares it too: its controller ticks fast.
    env = {**ROUTER_ENV, "MODELYARD_REGISTRY_ROLLOUT_INTERVAL_SECONDS": "0.2"}
    mesh = start_sim_mesh(tmp_path_factory.mktemp("fuzz-mesh"), http=True, env=env)
    try:
        yield mesh
        rss = ", ".join(f"{name} {v / (1 << 20):.0f} MB" for name, v in mesh.rss().items())
        FIGURES["RSS at the end"] = rss
    finally:
        mesh.stop()


@pytest.fixture(scope="session")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the gRPC channels of every fuzz case (hypothesis calls the
    case synchronously; each case runs its calls on this loop)."""
    with asyncio.Runner() as loop:
        yield loop


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, figure in FIGURES.items():
        terminalreporter.write_line(f"{name}: {figure}")
    if CASES:
        per = ", ".join(f"{name} {n}" for name, n in sorted(CASES.items()))
        terminalreporter.write_line(f"fuzz cases run: {sum(CASES.values())} ({per})")
        codes = ", ".join(f"{code} {n}" for code, n in CODES.most_common())
        terminalreporter.write_line(f"fuzz outcomes: {codes}")
