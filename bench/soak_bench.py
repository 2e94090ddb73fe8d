"""Soak bench: minutes of mixed traffic through a real mesh; do RSS and open files stay flat?

    .venv/bin/python -m bench.soak_bench [--minutes 10] [--clients 4] [--sample-s 5]

Registry (SQLite), one worker on the sim engine and a router as processes on loopback.
Three sim models of 1.5 GiB each under a 4 GiB worker budget (two fit): clients generate
on a random model (so the worker swaps), a quarter of them cancel after the first token,
and an operator loop loads and unloads models by hand every two seconds. Every
`sample-s` seconds the bench reads each service's RSS and open file descriptors from
/proc; it reports the least-squares slope of each (per minute), over the whole run and
after the first fifth (allocator and cache warm-up). Writes bench/results/soak.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.report import machine, publish
from modelyard.bearer import bearer_metadata
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    router_pb2,
    router_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from tests.robustness.sim_mesh import (
    CLIENT_KEY,
    FAST,
    OPERATOR_TOKEN,
    GiB,
    SimMesh,
    start_sim_mesh,
    wait_served,
)

RESULTS = Path(__file__).parent / "results" / "soak.md"
MODELS = ("soak-a", "soak-b", "soak-c")
EXTRA = {**FAST, "sim_decode_ms_per_token": "2", "sim_memory_bytes": str(3 * GiB // 2)}
MB = 1 << 20


@dataclass
class Soak:
    mesh: SimMesh
    stop_at: float
    rng: random.Random = field(default_factory=lambda: random.Random(11))
    outcomes: Counter[str] = field(default_factory=Counter)
    samples: list[tuple[float, dict[str, int], dict[str, int]]] = field(default_factory=list)
    # The first error text of each status, so a report says why, not only how often.
    why: dict[str, str] = field(default_factory=dict)

    async def client(self, router: router_pb2_grpc.RouterServiceStub) -> None:
        while time.monotonic() < self.stop_at:
            request = router_pb2.GenerateRequest(
                model=self.rng.choice(MODELS),
                prompt="Tell me about soaking " * self.rng.randint(1, 20),
                sampling=common_pb2.SamplingParams(max_tokens=self.rng.randint(8, 64)),
            )
            cancel = self.rng.random() < 0.25
            call = router.Generate(request, timeout=30, metadata=bearer_metadata(CLIENT_KEY))
            try:
                async for event in call:
                    if cancel and event.WhichOneof("event") == "delta":
                        call.cancel()
                        break
                self.outcomes["CANCELLED (by the client)" if cancel else "OK"] += 1
            except grpc.aio.AioRpcError as err:
                self.outcomes[err.code().name] += 1
                self.why.setdefault(err.code().name, (err.details() or "")[:160])

    async def operator(self, worker: worker_pb2_grpc.WorkerServiceStub) -> None:
        metadata = bearer_metadata(OPERATOR_TOKEN)
        while time.monotonic() < self.stop_at:
            name = self.rng.choice(MODELS)
            try:
                if self.rng.random() < 0.5:
                    model = model_pb2.Model(name=name, version="1")
                    await worker.LoadModel(
                        worker_pb2.LoadModelRequest(model=model), timeout=30, metadata=metadata
                    )
                    self.outcomes["LoadModel OK"] += 1
                else:
                    await worker.UnloadModel(
                        worker_pb2.UnloadModelRequest(name=name, version="1"),
                        timeout=30,
                        metadata=metadata,
                    )
                    self.outcomes["UnloadModel OK"] += 1
            except grpc.aio.AioRpcError as err:
                self.outcomes[f"operator {err.code().name}"] += 1
                self.why.setdefault(f"operator {err.code().name}", (err.details() or "")[:160])
            await asyncio.sleep(2.0)  # the operator's pace

    async def sampler(self, every_s: float) -> None:
        began = time.monotonic()
        while True:
            self.samples.append((time.monotonic() - began, self.mesh.rss(), self.mesh.fds()))
            if time.monotonic() >= self.stop_at:
                return
            await asyncio.sleep(every_s)  # the sampling period


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return 60 * cov / var if var else 0.0


async def soak(mesh: SimMesh, seconds: float, clients: int, sample_s: float) -> Soak:
    run = Soak(mesh, time.monotonic() + seconds)
    local = mesh.local
    async with (
        grpc.aio.insecure_channel(local.router_address) as rch,
        grpc.aio.insecure_channel(local.worker_addresses[0]) as wch,
    ):
        router = router_pb2_grpc.RouterServiceStub(rch)
        worker = worker_pb2_grpc.WorkerServiceStub(wch)
        tasks = [run.client(router) for _ in range(clients)]
        await asyncio.gather(*tasks, run.operator(worker), run.sampler(sample_s))
    return run


def table(run: Soak) -> list[str]:
    rows = [
        "| service | RSS start / end MB | RSS slope MB/min (all / after warm-up) "
        "| fds start / end | fds slope /min (all / after warm-up) |",
        "|---|---:|---:|---:|---:|",
    ]
    warm = run.samples[len(run.samples) // 5 :]
    for name in run.samples[0][1]:
        rss = [(t, r[name] / MB) for t, r, _ in run.samples]
        fds = [(t, float(f[name])) for t, _, f in run.samples]
        rss_warm = [(t, r[name] / MB) for t, r, _ in warm]
        fds_warm = [(t, float(f[name])) for t, _, f in warm]
        rows.append(
            f"| {name} | {rss[0][1]:.0f} / {rss[-1][1]:.0f} "
            f"| {slope_per_min(rss):+.2f} / {slope_per_min(rss_warm):+.2f} "
            f"| {fds[0][1]:.0f} / {fds[-1][1]:.0f} "
            f"| {slope_per_min(fds):+.2f} / {slope_per_min(fds_warm):+.2f} |"
        )
    rows += ["", f"Outcomes: {dict(sorted(run.outcomes.items()))}; {len(run.samples)} samples."]
    rows += [f"- first {code}: {text}" for code, text in sorted(run.why.items())]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="Length of the soak.")
    parser.add_argument("--clients", type=int, default=4, help="Concurrent generating clients.")
    parser.add_argument("--sample-s", type=float, default=5.0, help="Seconds between samples.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mesh = start_sim_mesh(Path(tmp), MODELS, extra=EXTRA)
        try:
            for name in MODELS[1:]:
                wait_served(mesh.local.router_address, name)
            run = asyncio.run(soak(mesh, args.minutes * 60, args.clients, args.sample_s))
            alive = mesh.alive()
        finally:
            mesh.stop()
    text = "\n".join(
        [
            "# Soak bench",
            "",
            f"Machine: {machine()}; client and services share the CPUs. "
            f"{args.minutes:g} min, {args.clients} clients, 3 sim models (two fit), 25% "
            f"cancelled after the first token, an operator load/unload every 2 s; "
            f"`python -m bench.soak_bench`.",
            "",
            *table(run),
            f"Services that exited during the soak: {alive or 'none'}.",
            "",
        ]
    )
    publish(RESULTS, text)


if __name__ == "__main__":
    main()
