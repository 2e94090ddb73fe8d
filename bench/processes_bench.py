"""Router processes bench (issue 16): does `router serve --processes 2` on two cores carry
more than one router process on one core?

    .venv/bin/python -m bench.processes_bench [--requests 600] [--repeats 3]
                                              [--levels 32,64] [--workers 2]

Two meshes side by side, each with instant sim workers (16 tokens at once) behind one
router: one with `--processes 1`, its process tree pinned to CPU 0; one with
`--processes 2`, pinned to CPUs 0-1 (every thread of every process, as `taskset -a`).
Workers, registries and the load generator are not pinned: on a 2-core machine they share
the cores with the routers, so the ratio is what this box can show, not what 2 cores of
routing alone would. The load goes through RouterService.Generate over 16 channels (each
its own connection, so both siblings get some), closed loop. Repetitions interleave the
two meshes; figures are min / median / max. Writes bench/results/processes.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

from bench.mesh_load import GrpcClient, Level, percentile, run_level
from bench.mesh_systems import INSTANT
from bench.repeats import spread
from bench.report import machine, publish
from tests.robustness.sim_mesh import CLIENT_KEY, SimMesh, start_sim_mesh

RESULTS = Path(__file__).parent / "results" / "processes.md"
CHANNELS = 16
SETUPS = {1: {0}, 2: {0, 1}}  # router processes -> the CPUs their tree is pinned to


def pin_tree(root: int, cpus: set[int]) -> int:
    """Pin every thread of `root` and its descendants to `cpus`; the threads pinned."""
    pinned, todo = 0, [root]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), cpus)
                children = (task / "children").read_text().split()
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended meanwhile
            pinned += 1
            todo += [int(c) for c in children]
    return pinned


def start(stack: ExitStack, work: Path, processes: int, workers: int) -> SimMesh:
    data = work / f"mesh-{processes}"
    data.mkdir()
    env = {"MODELYARD_ROUTER_PROCESSES": str(processes)}
    mesh = start_sim_mesh(data, ("instant",), extra=INSTANT, env=env, workers=workers)
    stack.callback(mesh.stop)
    pin_tree(mesh.local.service("router").process.pid, SETUPS[processes])
    return mesh


async def measure(
    meshes: dict[int, SimMesh], levels: list[int], requests: int, repeats: int
) -> dict[tuple[int, int], list[Level]]:
    clients = {
        n: GrpcClient(m.local.router_address, "instant", CLIENT_KEY, channels=CHANNELS)
        for n, m in meshes.items()
    }
    results: dict[tuple[int, int], list[Level]] = defaultdict(list)
    try:
        for client in clients.values():  # warm channels, both siblings and the workers
            await run_level(client.one, 4 * CHANNELS, CHANNELS, 0)
        for rep in range(repeats):
            for level in levels:
                order = list(meshes) if rep % 2 == 0 else list(reversed(meshes))
                for n in order:
                    pid = meshes[n].local.service("router").process.pid
                    results[(n, level)].append(
                        await run_level(clients[n].one, requests, level, pid)
                    )
    finally:
        for client in clients.values():
            await client.close()
    return results


def report(results: dict[tuple[int, int], list[Level]], args: argparse.Namespace) -> str:
    lines = [
        "# Router processes bench: `--processes 2` on 2 CPUs against 1 on 1 CPU",
        "",
        f"Machine: {machine()}. Router trees pinned (1 process: CPU 0; 2 processes: CPUs 0-1); "
        f"{args.workers} instant sim workers per mesh, registries and the load generator "
        "unpinned, sharing the cores.",
        f"`python -m bench.processes_bench --requests {args.requests} --repeats "
        f"{args.repeats} --levels {','.join(map(str, args.levels))} --workers {args.workers}`: "
        f"RouterService.Generate, 16 tokens, over {CHANNELS} channels, closed loop; "
        "min / median / max over interleaved repetitions.",
        "",
        "| router processes | c | req/s | TTFT p50 ms | TTFT p99 ms | router CPU ms/request "
        "| errors |",
        "|---:|---:|---|---|---|---|---:|",
    ]
    for n in SETUPS:
        for level in args.levels:
            runs = results[(n, level)]
            lines.append(
                f"| {n} | {level} | {spread([r.rps for r in runs], '{:.0f}')} | "
                f"{spread([percentile(r.ttfts_ms, 0.5) for r in runs])} | "
                f"{spread([percentile(r.ttfts_ms, 0.99) for r in runs])} | "
                f"{spread([r.cpu_s * 1000 / max(1, len(r.ttfts_ms)) for r in runs])} | "
                f"{sum(r.errors for r in runs)} |"
            )
    lines += ["", "Throughput ratio, 2 processes over 1, per repetition:", ""]
    for level in args.levels:
        ratios = [
            two.rps / one.rps if one.rps else float("nan")
            for one, two in zip(results[(1, level)], results[(2, level)], strict=True)
        ]
        lines.append(f"- c = {level}: {spread(ratios, '{:.2f}')}")
    errors = {
        f"{n} processes c={level}": r.first_error
        for (n, level), runs in sorted(results.items())
        for r in runs
        if r.first_error
    }
    lines += [""] + [f"- first error, {where}: {what}" for where, what in errors.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[32, 64])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("this bench needs at least 2 CPUs")
    with tempfile.TemporaryDirectory(prefix="processes-bench-") as tmp, ExitStack() as stack:
        meshes = {n: start(stack, Path(tmp), n, args.workers) for n in SETUPS}
        results = asyncio.run(measure(meshes, args.levels, args.requests, args.repeats))
    publish(RESULTS, report(results, args))


if __name__ == "__main__":
    main()
