"""Router bench: the TTFT the router adds over calling the worker directly, and the
router's requests/s, at concurrency 1, 8 and 32.

    .venv/bin/python -m bench.router_bench [--requests 64]

A real mesh (registry, one llama.cpp worker with SmolLM2, router) as processes on
loopback. Requests ask for max_tokens=1 on a short prompt, so the engine is as fast
as it gets and the router's own cost shows. Direct and routed runs alternate per
concurrency level on the same warm worker. Writes bench/results/router.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.report import machine, publish
from modelyard.bundled import smollm2_model
from modelyard.local_mesh import LocalMesh
from modelyard.v1 import (
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

RESULTS = Path(__file__).parent / "results" / "router.md"
PROMPT = "Hi"
LEVELS = (1, 8, 32)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def run_level(call: Any, requests: int, concurrency: int) -> tuple[list[float], float]:
    """TTFTs (ms) of `requests` calls with `concurrency` in flight, and the wall time."""
    ttfts: list[float] = []
    queue = list(range(requests))

    async def one_client() -> None:
        while queue:
            queue.pop()
            began = time.perf_counter()
            first = None
            async for event in call():
                if first is None and event.WhichOneof("event") in ("delta", "finished"):
                    first = time.perf_counter()
            ttfts.append(((first or time.perf_counter()) - began) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return ttfts, time.perf_counter() - began


async def bench(mesh: LocalMesh, requests: int) -> list[str]:
    model = smollm2_model()
    sampling = common_pb2.SamplingParams(max_tokens=1, temperature=0.0)
    async with (
        grpc.aio.insecure_channel(mesh.router_address) as rch,
        grpc.aio.insecure_channel(mesh.worker_addresses[0]) as wch,
    ):
        router: Any = router_pb2_grpc.RouterServiceStub(rch)
        worker: Any = worker_pb2_grpc.WorkerServiceStub(wch)

        def routed() -> Any:
            return router.Generate(
                router_pb2.GenerateRequest(model=model.name, prompt=PROMPT, sampling=sampling),
                timeout=60,
            )

        def direct() -> Any:
            return worker.Generate(
                worker_pb2.WorkerServiceGenerateRequest(
                    request_id=os.urandom(8).hex(),
                    model=model,
                    prompt=PROMPT,
                    sampling=sampling,
                    load_if_cold=True,
                ),
                timeout=60,
            )

        await run_level(routed, 8, 2)  # warm up: load the model, open channels
        await run_level(direct, 8, 2)
        rows = [
            "| concurrency | direct TTFT p50 / p99 ms | routed TTFT p50 / p99 ms "
            "| router adds p50 / p99 ms | direct req/s | routed req/s |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for level in LEVELS:
            d, d_wall = await run_level(direct, requests, level)
            r, r_wall = await run_level(routed, requests, level)
            rows.append(
                f"| {level} | {pct(d, 0.5):.1f} / {pct(d, 0.99):.1f} "
                f"| {pct(r, 0.5):.1f} / {pct(r, 0.99):.1f} "
                f"| {pct(r, 0.5) - pct(d, 0.5):+.1f} / {pct(r, 0.99) - pct(d, 0.99):+.1f} "
                f"| {requests / d_wall:.0f} | {requests / r_wall:.0f} |"
            )
        # Routing alone: the median of router-measured route_ms on a quiet router.
        route_ms = []
        for _ in range(20):
            async for event in routed():
                if event.WhichOneof("event") == "finished":
                    route_ms.append(event.finished.timings.route_ms)
        rows.append("")
        rows.append(
            f"Scheduling + connect (`Timings.route_ms`), quiet router: median "
            f"{statistics.median(route_ms):.2f} ms."
        )
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=64, help="Requests per level and mode.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mesh = LocalMesh(data_dir=Path(tmp), worker_threads=1)
        mesh.start()
        try:
            with grpc.insecure_channel(mesh.registry_address) as channel:
                registry_pb2_grpc.RegistryServiceStub(channel).RegisterModel(
                    registry_pb2.RegisterModelRequest(model=smollm2_model()), timeout=30
                )
            time.sleep(0.5)  # the router's Watch picks the model up
            rows = asyncio.run(bench(mesh, args.requests))
        finally:
            mesh.stop()
    text = "\n".join(
        [
            "# Router bench",
            "",
            f"Machine: {machine()}. One llama.cpp worker (SmolLM2-135M Q4_1, 1 thread), "
            "max_tokens=1, prompt 'Hi'; client, router, worker and registry share the CPUs.",
            f"{args.requests} requests per concurrency level and mode; "
            "`python -m bench.router_bench`.",
            "",
            *rows,
            "",
        ]
    )
    publish(RESULTS, text)


if __name__ == "__main__":
    main()
