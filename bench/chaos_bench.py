"""Chaos bench: how requests fare through each fault of the chaos scenario.

    .venv/bin/python -m bench.chaos_bench [--clients 4] [--hold 5]

The scenario of tests/robustness/test_chaos.py (registry, three sim-engine workers and a
router as processes, discovering each other through the Consul stand-in; every worker
behind a TCP proxy that can cut its connections): kill -9 a worker, SIGSTOP one, cut
every router -> worker connection mid-stream, kill -9 and restart the registry while
registering versions, stop the Consul stand-in. Each fault is held at least --hold
seconds while --clients clients generate back to back (30 tokens at 10 ms each, deadline
8 s). Per phase: requests served (and served by a retry), served per second (the healthy
part's throughput), failed by status, and the registry writes acknowledged vs found
afterwards. Writes bench/results/chaos.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.report import machine, publish
from tests.robustness.chaos_faults import failures, markdown, report, run_faults
from tests.robustness.chaos_mesh import DEADLINE_S, ChaosMesh, SteadyLoad

RESULTS = Path(__file__).parent / "results" / "chaos.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--hold", type=float, default=5.0, help="seconds each fault is held")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mesh = ChaosMesh(Path(tmp)).start()
        try:
            with SteadyLoad(mesh.router_address, clients=args.clients) as load:
                writer = run_faults(mesh, load, hold_s=args.hold)
            found = mesh.versions("chaos-writes")
        finally:
            mesh.stop()
    late = sum(e.seconds > DEADLINE_S + 2 for e in load.ended)
    lost = len(writer.acknowledged - found)
    text = "\n".join(
        [
            "# Chaos under load",
            "",
            f"`python -m bench.chaos_bench --clients {args.clients} --hold {args.hold}` on "
            f"{machine()}.",
            "",
            markdown(report(load)),
            "",
            f"Requests: {len(load.ended)}; past their deadline + 2 s: {late}. Registry writes "
            f"acknowledged: {len(writer.acknowledged)}, refused while it was down: "
            f"{writer.refused}, acknowledged but lost: {lost}.",
            "",
            "Failures (up to 3 distinct per phase):",
            "",
            *failures(load),
            "",
        ]
    )
    publish(RESULTS, text)


if __name__ == "__main__":
    main()
