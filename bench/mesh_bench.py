"""Mesh bench (issue 16): what a router adds to a streamed request, modelyard beside the
routers a user would pick instead, in one run on one machine.

    .venv/bin/python -m bench.mesh_bench [--requests 200] [--repeats 3] [--levels 1,8,32]
                                         [--no-peers]

Instant backends, so the routers' own cost shows: an OpenAI backend that streams 16
chunks at once (bench/instant_backend.py) behind vllm-router 0.1.17 (Rust) and the LiteLLM
proxy (both from PyPI, in bench/.venvs, installed on first use), and for modelyard one sim
worker that streams 16 tokens at once behind the router's gRPC port, its OpenAI front,
and in direct-stream mode (one PickWorker call to the router, then the worker's Generate
with the router-signed ticket; the worker reports the outcome back to the router). A bare
grpc.aio process relaying the worker's stream as bytes (bench/grpc_relay.py) is the floor
of any Python gRPC router on the machine.
Closed loop at each concurrency; load generator, routers and backends share the cores.

- Router-added TTFT: the system's TTFT percentile minus its backend's, called directly
  in the same repetition (the instant backend for the HTTP peers, the sim worker's
  WorkerService.Generate for modelyard).
- Router CPU per request: utime + stime of the router's process tree over a level,
  divided by the requests it served.
Repetitions are interleaved (every system at a level, then the next level, then the next
repetition) and reported as min / median / max. Writes bench/results/mesh.md.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path

from bench.mesh_load import (
    DirectClient,
    GrpcClient,
    HttpClient,
    Level,
    WorkerClient,
    percentile,
    run_level,
)
from bench.mesh_systems import (
    GRPC_FLOOR,
    System,
    start_backend,
    start_grpc_relay,
    start_litellm,
    start_modelyard,
    start_vllm_router,
)
from bench.repeats import spread
from bench.report import machine, publish
from tests.robustness.sim_mesh import ROUTER_TO_WORKER

RESULTS = Path(__file__).parent / "results" / "mesh.md"
WORKER_DIRECT = "worker (direct)"
BACKEND_DIRECT = "backend (direct)"
Results = dict[tuple[str, int], list[Level]]


def baseline_of(system: str) -> str:
    return (
        WORKER_DIRECT if system.startswith("modelyard") or system == GRPC_FLOOR else BACKEND_DIRECT
    )


async def measure(
    calls: dict[str, tuple[Callable[[], Awaitable[float]], int]],
    levels: list[int],
    requests: int,
    repeats: int,
) -> Results:
    results: Results = defaultdict(list)
    names = list(calls)
    for one, _ in calls.values():  # warm connections, caches and JITs
        for _ in range(20):
            await one()
    for rep in range(repeats):
        for level in levels:
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                one, pid = calls[name]
                results[(name, level)].append(await run_level(one, requests, level, pid))
    return results


def report(results: Results, levels: list[int], args: argparse.Namespace) -> str:
    names = sorted({name for name, _ in results}, key=lambda n: (n.endswith("(direct)"), n))
    lines = [
        "# Mesh bench: what a router adds to a streamed request",
        "",
        f"Machine: {machine()}. Load generator, routers and instant backends share the cores.",
        f"{args.requests} requests of 16 streamed tokens per system, level and repetition; "
        f"{args.repeats} interleaved repetitions; `python -m bench.mesh_bench "
        f"--requests {args.requests} --repeats {args.repeats} "
        f"--levels {','.join(map(str, args.levels))}{' --no-peers' if args.no_peers else ''}`. "
        "Figures: min / median / max over repetitions.",
        "",
        "| system | c | added TTFT p50 ms | added TTFT p99 ms | req/s | router CPU ms/request "
        "| errors |",
        "|---|---:|---|---|---|---|---:|",
    ]
    for name in names:
        for level in levels:
            runs = results[(name, level)]
            base = results[(baseline_of(name), level)]
            direct = name.endswith("(direct)")
            p50 = [
                percentile(r.ttfts_ms, 0.5) - (0 if direct else percentile(b.ttfts_ms, 0.5))
                for r, b in zip(runs, base, strict=True)
            ]
            p99 = [
                percentile(r.ttfts_ms, 0.99) - (0 if direct else percentile(b.ttfts_ms, 0.99))
                for r, b in zip(runs, base, strict=True)
            ]
            cpu = [r.cpu_s * 1000 / max(1, len(r.ttfts_ms)) for r in runs]
            lines.append(
                f"| {name} | {level} | {spread(p50)} | {spread(p99)} | "
                f"{spread([r.rps for r in runs], '{:.0f}')} | {spread(cpu)} | "
                f"{sum(r.errors for r in runs)} |"
            )
    lines += ["", "Direct rows show the backend's own TTFT (not an added figure).", ""]
    errors = {
        f"{name} c={level}": r.first_error
        for (name, level), runs in sorted(results.items())
        for r in runs
        if r.first_error
    }
    lines += [f"- first error, {where}: {what}" for where, what in errors.items()]
    return "\n".join(lines)


async def run(args: argparse.Namespace, work: Path, stack: ExitStack) -> Results:
    backend = start_backend(stack, work)
    modelyard, mesh = start_modelyard(stack, work)
    floor = start_grpc_relay(stack, work, mesh.local.worker_addresses[0])
    systems: list[System] = [backend, *modelyard, floor]
    if not args.no_peers:
        systems += [start_vllm_router(stack, work, backend), start_litellm(stack, work, backend)]
    calls: dict[str, tuple[Callable[[], Awaitable[float]], int]] = {}
    closers: list[Callable[[], object]] = []
    for system in systems:
        client: GrpcClient | DirectClient | HttpClient | WorkerClient
        if system.kind == "grpc":
            client = GrpcClient(system.address, system.model, system.api_key)
        elif system.kind == "worker":
            client = WorkerClient(system.address, mesh.model, ROUTER_TO_WORKER)
        elif system.kind == "direct":
            client = DirectClient(system.address, system.model, system.api_key)
        else:
            client = HttpClient(system.address, system.model, system.api_key)
        calls[system.name] = (client.one, system.pid)
        closers.append(client.close)
    worker = WorkerClient(mesh.local.worker_addresses[0], mesh.model, ROUTER_TO_WORKER)
    calls[WORKER_DIRECT] = (worker.one, 0)
    closers.append(worker.close)
    try:
        return await measure(calls, args.levels, args.requests, args.repeats)
    finally:
        for close in closers:
            done = close()
            if asyncio.iscoroutine(done):
                await done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--no-peers", action="store_true", help="modelyard and the backends only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp, ExitStack() as stack:
        results = asyncio.run(run(args, Path(tmp), stack))
    publish(RESULTS, report(results, args.levels, args))


if __name__ == "__main__":
    main()
