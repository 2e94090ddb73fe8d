"""Overload bench: what the router's admission buys when ten times the capacity arrives.

    .venv/bin/python -m bench.overload_bench [--seconds 30] [--reps 3] [--factor 10]

A real mesh (registry on SQLite, one worker on the sim engine, router) as processes on
loopback, the scenario of tests/robustness/test_overload.py: a sim model decoding 4
sequences together at 5 ms a token, 16 tokens a request, the router admitting 8
generations (MODELYARD_ROUTER_MAX_IN_FLIGHT). Each repetition runs, in turn: one client
(unloaded), as many clients as the worker decodes sequences (capacity), and `factor`
times that many (overload; a refused client pauses 100 ms and tries again). Reports the
admitted p99 against the unloaded p99, throughput and the counts by status, min / median
/ max over the repetitions. Writes bench/results/overload.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.report import machine, publish
from tests.robustness.overload import (
    DECODE_MS,
    LOAD_MODEL,
    MAX_IN_FLIGHT,
    ROUTER_ENV,
    SEQUENCES,
    TOKENS,
    Run,
    drive,
    p99,
    register_load_model,
)
from tests.robustness.sim_mesh import start_sim_mesh, wait_served

RESULTS = Path(__file__).parent / "results" / "overload.md"


async def repetition(address: str, seconds: float, factor: int) -> dict[str, Run]:
    return {
        "unloaded": await drive(address, 1, seconds),
        "capacity": await drive(address, SEQUENCES, seconds),
        "overload": await drive(address, factor * SEQUENCES, seconds),
    }


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def table(reps: list[dict[str, Run]], factor: int) -> list[str]:
    def each(f: Callable[[dict[str, Run]], float]) -> list[float]:
        return [f(r) for r in reps]

    unloaded = each(lambda r: p99(r["unloaded"].served()) * 1000)
    admitted = each(lambda r: p99(r["overload"].served()) * 1000)
    ratio = [a / u for a, u in zip(admitted, unloaded, strict=True)]
    counts: Counter[str] = Counter()
    for r in reps:
        counts += r["overload"].counts()
    shed = each(lambda r: r["overload"].counts()["RESOURCE_EXHAUSTED"] / len(r["overload"].ended))
    return [
        "| measure | min / median / max |",
        "|---|---:|",
        f"| p99 served, unloaded (1 client), ms | {spread(unloaded)} |",
        f"| p99 admitted, overload ({factor * SEQUENCES} clients), ms | {spread(admitted)} |",
        f"| ratio admitted / unloaded p99 | {spread(ratio, '{:.2f}')} |",
        f"| served req/s at capacity ({SEQUENCES} clients) | "
        f"{spread(each(lambda r: r['capacity'].throughput))} |",
        f"| served req/s under overload | {spread(each(lambda r: r['overload'].throughput))} |",
        f"| share of requests shed (RESOURCE_EXHAUSTED) | {spread(shed, '{:.2f}')} |",
        "",
        f"Overload outcomes, all repetitions: {dict(sorted(counts.items()))}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of each phase.")
    parser.add_argument("--reps", type=int, default=3, help="Interleaved repetitions.")
    parser.add_argument("--factor", type=int, default=10, help="Overload: x capacity clients.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mesh = start_sim_mesh(Path(tmp), env=ROUTER_ENV)
        try:
            register_load_model(mesh)
            wait_served(mesh.local.router_address, LOAD_MODEL)
            reps = [
                asyncio.run(repetition(mesh.local.router_address, args.seconds, args.factor))
                for _ in range(args.reps)
            ]
        finally:
            mesh.stop()
    text = "\n".join(
        [
            "# Overload bench",
            "",
            f"Machine: {machine()}; client, router, worker and registry share the CPUs. "
            f"Sim model: {SEQUENCES} sequences at {DECODE_MS:g} ms/token, {TOKENS} tokens a "
            f"request; router admits {MAX_IN_FLIGHT}. {args.reps} interleaved repetitions of "
            f"{args.seconds:g} s phases; `python -m bench.overload_bench`.",
            "",
            *table(reps, args.factor),
            "",
        ]
    )
    publish(RESULTS, text)


if __name__ == "__main__":
    main()
