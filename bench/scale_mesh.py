"""Scale over the wire: one router in front of up to 1,000 sim workers, each a real worker
with its own gRPC server, status stream to the router, registry Watch and Consul
registration, found by the router through the Consul stand-in (tests/consul_agent.py:
no Consul agent installs here). Complements bench.scale_bench, which times the
scheduling cycle alone in process.

    .venv/bin/python -m bench.scale_mesh [--sizes 100,300,1000] [--hosts 4] [--models 50]
                                         [--requests 300] [--churn-s 20]

For each pool size, a fresh mesh: registry (SQLite) and router as their own processes,
the workers in `--hosts` processes (bench/scale_hosts.py), `--models` sim models each
warm on two workers in 50 (every worker preloads two). Then:

- idle, 10 s: CPU per second of router, registry, worker hosts and the bench process
  (status heartbeats, watches and health checks alone), and resident memory: router,
  registry, and the worker hosts per worker;
- load: `--requests` streamed 16-token generations, 8 at a time, each for a random model:
  the router's scheduling time (Timings.route_ms), TTFT, req/s, router CPU per request,
  and the CPU per second of each process;
- churn: the same load for `--churn-s` seconds while workers leave and join at 5/s
  (each leaver deregisters from Consul, then drains and stops; each joiner starts,
  registers and preloads): requests that failed, and how many left and joined.

Writes bench/results/scale-mesh.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from bench.mesh_load import percentile, tree_cpu_s
from bench.report import machine, publish
from modelyard.bearer import bearer_metadata
from modelyard.local_mesh import LocalMesh
from modelyard.v1 import common_pb2, registry_pb2, registry_pb2_grpc, router_pb2, router_pb2_grpc
from tests.consul_agent import ConsulAgentStandIn
from tests.robustness.sim_mesh import ADMIN_TOKEN, CLIENT_KEY, mesh_env, rss_bytes, sim_model

RESULTS = Path(__file__).parent / "results" / "scale-mesh.md"
OPERATOR_KEY = "scale-operator"
CHURN_PER_S = 5
CONCURRENCY = 8
IDLE_S = 10.0
T = TypeVar("T")


@dataclass
class Load:
    route_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    wall_s: float = 0.0
    router_cpu_s: float = 0.0


@dataclass
class Size:
    workers: int
    ready_s: float  # from the first host starting until the router lists every worker
    router_rss: int
    registry_rss: int
    hosts_rss: int
    load: Load
    churn: Load
    left: int
    joined: int
    # CPU seconds per second by process, idle (no requests) and under the steady load.
    idle_cpu: dict[str, float]
    steady_cpu: dict[str, float]


class Hosts:
    """The worker host processes and their command pipes."""

    def __init__(self, stack: ExitStack, work: Path, env: dict[str, str], args: Any) -> None:
        self.procs: list[tuple[subprocess.Popen[str], range]] = []
        per = -(-args.size // args.hosts)
        for first in range(0, args.size, per):
            count = min(per, args.size - first)
            cmd = [sys.executable, "-m", "bench.scale_hosts", "--first", str(first)]
            cmd += ["--count", str(count), "--models", str(args.models)]
            cmd += ["--registry", args.registry, "--work", str(work)]
            log = (work / f"host-{first}.log").open("w")
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, text=True
            )
            stack.callback(_quit, proc)
            self.procs.append((proc, range(first, first + count)))

    def wait_ready(self) -> None:
        for proc, _ in self.procs:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line.startswith("ready"):
                raise RuntimeError(f"a worker host failed to start: {line!r}")

    def command(self, verb: str, i: int) -> None:
        for proc, owned in self.procs:
            if i in owned and proc.stdin and proc.stdout:
                proc.stdin.write(f"{verb} {i}\n")
                proc.stdin.flush()
                proc.stdout.readline()
                return

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.procs]


def _quit(proc: subprocess.Popen[str]) -> None:
    try:
        if proc.stdin:
            proc.stdin.write("quit\n")
            proc.stdin.close()
        proc.wait(60)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()


def cpu_by_process(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each named group of processes, and of this one (the load
    generator and the Consul stand-in)."""
    mine = os.times()
    used = {name: sum(tree_cpu_s(p) for p in group) for name, group in pids.items()}
    return {**used, "load generator + Consul stand-in": mine.user + mine.system}


def cpu_rates(groups: dict[str, list[int]], run: Callable[[], T]) -> tuple[dict[str, float], T]:
    """What `run` returns, and each group's CPU seconds per second while it ran."""
    before, began = cpu_by_process(groups), time.perf_counter()
    result = run()
    wall = time.perf_counter() - began
    after = cpu_by_process(groups)
    return {k: (after[k] - before[k]) / wall for k in after}, result


async def listed_workers(router: str) -> int:
    async with grpc.aio.insecure_channel(router) as channel:
        stub: Any = router_pb2_grpc.RouterServiceStub(channel)
        reply = await stub.ListWorkers(
            router_pb2.ListWorkersRequest(), metadata=bearer_metadata(OPERATOR_KEY), timeout=30
        )
        return len(reply.workers)


async def load(router: str, models: int, until: float, requests: int, router_pid: int) -> Load:
    """Closed loop, CONCURRENCY at a time: `requests` generations, or until `until`."""
    result = Load()
    left = [requests]
    rng = random.Random(7)
    meta = bearer_metadata(CLIENT_KEY)
    async with grpc.aio.insecure_channel(router) as channel:
        stub: Any = router_pb2_grpc.RouterServiceStub(channel)

        async def one() -> None:
            began = time.perf_counter()
            request = router_pb2.GenerateRequest(
                model=f"sim-{rng.randrange(models):02d}",
                prompt="Say hi",
                sampling=common_pb2.SamplingParams(max_tokens=16, temperature=0),
            )
            first = 0.0
            async for event in stub.Generate(request, timeout=30, metadata=meta):
                kind = event.WhichOneof("event")
                if kind == "delta" and not first:
                    first = (time.perf_counter() - began) * 1000
                elif kind == "finished":
                    result.route_ms.append(event.finished.timings.route_ms)
            result.ttft_ms.append(first)

        async def client() -> None:
            while left[0] > 0 and time.monotonic() < until:
                left[0] -= 1
                try:
                    await one()
                except grpc.aio.AioRpcError as err:
                    result.errors += 1
                    result.first_error = result.first_error or f"{err.code().name}: {err.details()}"

        cpu = tree_cpu_s(router_pid)
        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        result.wall_s = time.perf_counter() - began
        result.router_cpu_s = tree_cpu_s(router_pid) - cpu
    return result


async def churn(hosts: Hosts, size: int, stop: float) -> tuple[int, int]:
    """Workers leave and join, CHURN_PER_S a second in all, while the load runs."""
    rng = random.Random(11)
    down: list[int] = []
    left = joined = 0
    while time.monotonic() < stop:
        began = time.monotonic()
        if down and (len(down) > size // 10 or rng.random() < 0.5):
            i = down.pop(rng.randrange(len(down)))
            await asyncio.to_thread(hosts.command, "start", i)
            joined += 1
        else:
            i = rng.choice([w for w in range(size) if w not in down])
            down.append(i)
            await asyncio.to_thread(hosts.command, "stop", i)
            left += 1
        await asyncio.sleep(max(0.0, 1 / CHURN_PER_S - (time.monotonic() - began)))
    return left, joined


def register_models(registry: str, artifact: Path, count: int) -> None:
    with grpc.insecure_channel(registry) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        for m in range(count):
            model = sim_model(artifact, f"sim-{m:02d}")  # FAST: 1 ms a token, no early end, 1 GiB
            stub.RegisterModel(
                registry_pb2.RegisterModelRequest(model=model),
                timeout=30,
                metadata=bearer_metadata(ADMIN_TOKEN),
            )


async def wait_listed(router: str, size: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while (seen := await listed_workers(router)) < size:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the router lists {seen} of {size} workers")
        await asyncio.sleep(1)


def measure(size: int, args: argparse.Namespace) -> Size:
    with ExitStack() as stack:
        if args.work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:
            work = args.work / f"{size}-workers"
            work.mkdir(parents=True, exist_ok=True)
        consul = stack.enter_context(ConsulAgentStandIn())
        env = mesh_env(
            {
                "MODELYARD_CONSUL_ADDRESS": consul.address,
                "MODELYARD_CONSUL_CHECK_INTERVAL_S": "10",
                "MODELYARD_ROUTER_OPERATOR_KEYS": f"ops:{OPERATOR_KEY}",
            }
        )
        mesh = LocalMesh(data_dir=work, worker_ports=(), static_workers=False, env=env)
        mesh.start()
        stack.callback(mesh.stop)
        artifact = work / "sim.bin"
        artifact.write_bytes(b"a simulated model: any small file will do\n")
        register_models(mesh.registry_address, artifact, args.models)
        began = time.monotonic()
        host_args = argparse.Namespace(
            size=size, hosts=args.hosts, models=args.models, registry=mesh.registry_address
        )
        hosts = Hosts(stack, work, {**env, "MODELYARD_LOG_LEVEL": "WARNING"}, host_args)
        hosts.wait_ready()
        asyncio.run(wait_listed(mesh.router_address, size))
        ready_s = time.monotonic() - began
        router_pid = mesh.service("router").process.pid
        registry_pid = mesh.service("registry").process.pid
        groups = {"router": [router_pid], "registry": [registry_pid], "worker hosts": hosts.pids}
        time.sleep(2)
        idle_cpu, _ = cpu_rates(groups, lambda: time.sleep(IDLE_S))
        rss = (rss_bytes(router_pid), rss_bytes(registry_pid), sum(map(rss_bytes, hosts.pids)))
        steady_cpu, steady = cpu_rates(
            groups,
            lambda: asyncio.run(
                load(mesh.router_address, args.models, float("inf"), args.requests, router_pid)
            ),
        )

        async def churned() -> tuple[Load, int, int]:
            stop = time.monotonic() + args.churn_s
            running = asyncio.ensure_future(
                load(mesh.router_address, args.models, stop, 1 << 30, router_pid)
            )
            moved = await churn(hosts, size, stop)
            return await running, *moved

        churn_load, left, joined = asyncio.run(churned())
        return Size(size, ready_s, *rss, steady, churn_load, left, joined, idle_cpu, steady_cpu)


def report(sizes: list[Size], args: argparse.Namespace) -> str:
    mib = 1 << 20
    lines = [
        "# Scale over the wire",
        "",
        f"Machine: {machine()}. `python -m bench.scale_mesh --sizes {args.sizes} "
        f"--hosts {args.hosts} --models {args.models} --requests {args.requests} "
        f"--churn-s {args.churn_s}`. Router, registry, {args.hosts} worker host processes, "
        "the load generator and the Consul stand-in (in the bench process, running every "
        "worker's gRPC health check each 10 s) share the cores.",
        "",
        "| workers | ready s | router RSS MiB | registry RSS MiB | host RSS per worker MiB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s in sizes:
        lines.append(
            f"| {s.workers:,} | {s.ready_s:.0f} | {s.router_rss / mib:.0f} | "
            f"{s.registry_rss / mib:.0f} | {s.hosts_rss / s.workers / mib:.1f} |"
        )
    lines += [
        "",
        "Load: 16-token generations, 8 at a time, random model of "
        f"{args.models}. Churn: the same load while workers leave and join at "
        f"{CHURN_PER_S}/s.",
        "",
        "| workers | phase | requests | failed | req/s | route_ms p50 / p99 | TTFT p50 / p99 ms "
        "| router CPU ms/request | left / joined |",
        "|---:|---|---:|---:|---:|---|---|---:|---|",
    ]
    for s in sizes:
        for phase, run in (("steady", s.load), ("churn", s.churn)):
            done = len(run.ttft_ms)
            moved = f"{s.left} / {s.joined}" if phase == "churn" else ""
            lines.append(
                f"| {s.workers:,} | {phase} | {done + run.errors} | {run.errors} | "
                f"{done / run.wall_s:.0f} | {percentile(run.route_ms, 0.5):.2f} / "
                f"{percentile(run.route_ms, 0.99):.2f} | {percentile(run.ttft_ms, 0.5):.1f} / "
                f"{percentile(run.ttft_ms, 0.99):.1f} | "
                f"{run.router_cpu_s * 1000 / max(1, done):.1f} | {moved} |"
            )
    lines += [
        "",
        "CPU seconds per second by process (2 CPUs in all), idle (no requests: status "
        "streams, heartbeats, watches, health checks) and under the steady load:",
        "",
        "| workers | phase | " + " | ".join(sizes[0].steady_cpu) + " |",
        "|---:|---|" + "---:|" * len(sizes[0].steady_cpu),
    ]
    for s in sizes:
        for phase, cpu in (("idle", s.idle_cpu), ("steady", s.steady_cpu)):
            rates = " | ".join(f"{v:.2f}" for v in cpu.values())
            lines.append(f"| {s.workers:,} | {phase} | {rates} |")
    errors = [
        f"{s.workers} workers, {p}: {r.first_error}"
        for s in sizes
        for p, r in (("steady", s.load), ("churn", s.churn))
        if r.first_error
    ]
    if errors:
        lines += ["", "First errors:", *(f"- {e}" for e in errors)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--churn-s", type=float, default=20.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--work", type=Path, help="keep each size's logs and data here (default: a temp dir)"
    )
    args = parser.parse_args()
    sizes = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"{size} workers...", flush=True)
        sizes.append(measure(size, args))
        publish(args.output, report(sizes, args))  # after each size: a long run keeps what it has


if __name__ == "__main__":
    main()
