"""LATENCY scheduling vs round-robin on a heterogeneous pool: TTFT p50/p95 side by side.

    .venv/bin/python -m bench.latency_bench [--requests 96] [--clients 4]

Real processes on loopback with the real SmolLM2: a registry, a fast worker, a slow one
(MODELYARD_WORKER_TOKEN_DELAY_MS), and two routers over the same two workers, one
scheduling for LATENCY, one with the round-robin picker as the baseline. Both see the
same fixed concurrent load, measured in one run. Writes bench/results/latency.md.

The latency comparison lives here, not in the tests: a p95 over a few dozen samples on a
shared 2-core machine is a coin flip. tests/integration/test_router_latency.py uses the
same pool and asserts what the router decides (the share of requests sent to the fast
worker), which does not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc

from modelyard.bundled import smollm2_model
from modelyard.local_mesh import ServiceProcess, free_port, spawn_service
from modelyard.v1 import (
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

RESULTS = Path(__file__).parent / "results" / "latency.md"
# A request arriving at the busy slow worker waits out up to one step's delay before its
# first token, a penalty CPU contention does not shrink. Short answers (max_tokens 8)
# keep the slow worker's streams short.
SLOW_DELAY_MS = 400
MAX_TOKENS = 8


def _addr() -> str:
    return f"127.0.0.1:{free_port()}"


@contextmanager
def heterogeneous_pool(logs: Path) -> Iterator[dict[str, str]]:
    """Registry, workers "fast" and "slow" (both warm) and two routers over them.

    Yields the routers' addresses: {"latency": ..., "round_robin": ...}.
    """
    registry, fast, slow, latency_router, rr_router = (_addr() for _ in range(5))
    services: list[ServiceProcess] = []
    try:
        services.append(
            spawn_service(
                "registry",
                [
                    "registry",
                    "serve",
                    "--address",
                    registry,
                    "--database-url",
                    f"sqlite+aiosqlite:///{logs / 'registry.db'}",
                ],
                registry,
                logs / "registry.log",
            )
        )
        for name, address, delay in (("fast", fast, 0), ("slow", slow, SLOW_DELAY_MS)):
            services.append(
                spawn_service(
                    name,
                    [
                        "worker",
                        "serve",
                        "--address",
                        address,
                        "--worker-id",
                        name,
                        "--threads",
                        "1",
                        "--registry-address",
                        registry,
                    ],
                    address,
                    logs / f"{name}.log",
                    {"MODELYARD_WORKER_TOKEN_DELAY_MS": str(delay)},
                )
            )
        for service in services:  # routers start once registry and workers answer
            service.wait_healthy()
        for name, address, pickers in (
            ("latency-router", latency_router, "{}"),
            ("rr-router", rr_router, '{"latency": "round_robin"}'),
        ):
            router = spawn_service(
                name,
                [
                    "router",
                    "serve",
                    "--address",
                    address,
                    "--registry-address",
                    registry,
                    "--worker",
                    fast,
                    "--worker",
                    slow,
                ],
                address,
                logs / f"{name}.log",
                {"MODELYARD_ROUTER_PROFILE_PICKERS": pickers},
            )
            services.append(router)
            router.wait_healthy()
        model = smollm2_model()
        with grpc.insecure_channel(registry) as channel:
            registry_pb2_grpc.RegistryServiceStub(channel).RegisterModel(
                registry_pb2.RegisterModelRequest(model=model), timeout=30
            )
        for worker in (fast, slow):  # both warm: the comparison is about speed, not loads
            with grpc.insecure_channel(worker) as channel:
                worker_pb2_grpc.WorkerServiceStub(channel).LoadModel(
                    worker_pb2.LoadModelRequest(model=model), timeout=120
                )
        yield {"latency": latency_router, "round_robin": rr_router}
    finally:
        for service in reversed(services):
            service.stop()


def ttft(stub: router_pb2_grpc.RouterServiceStub, i: int) -> tuple[float, str]:
    """One LATENCY request: seconds to its first token, and the worker that served it."""
    request = router_pb2.GenerateRequest(
        model=smollm2_model().name,
        prompt=f"Story number {i}: Once upon a time",
        sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
        hints=common_pb2.RoutingHints(objective=common_pb2.OBJECTIVE_LATENCY),
    )
    started = time.monotonic()
    first: float | None = None
    worker = ""
    for event in stub.Generate(request, timeout=120):
        kind = event.WhichOneof("event")
        if kind == "started":
            worker = event.started.worker_id
        elif kind in ("delta", "finished") and first is None:
            first = time.monotonic() - started
    assert first is not None
    return first, worker


def load(router: str, requests: int, clients: int) -> list[tuple[float, str]]:
    """`requests` requests through `router`, `clients` at a time."""
    with grpc.insecure_channel(router) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with ThreadPoolExecutor(clients) as pool:
            return list(pool.map(lambda i: ttft(stub, i), range(requests)))


def share_to(results: list[tuple[float, str]], worker: str) -> float:
    return sum(w == worker for _, w in results) / len(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, heterogeneous_pool(Path(tmp)) as routers:
        load(routers["latency"], 8, args.clients)  # TTFT and token-gap estimates
        load(routers["round_robin"], 4, args.clients)
        results = {name: load(r, args.requests, args.clients) for name, r in routers.items()}
    rows = []
    for name, r in results.items():
        q = statistics.quantiles([t * 1000 for t, _ in r], n=20)
        rows.append(
            f"| {name} | {statistics.median(t * 1000 for t, _ in r):.0f} | {q[-1]:.0f} | "
            f"{share_to(r, 'fast'):.2f} |"
        )
    text = "\n".join(
        [
            "# LATENCY vs round-robin (TTFT, ms)",
            "",
            f"{args.requests} requests per router, {args.clients} clients, slow worker "
            f"+{SLOW_DELAY_MS} ms per token, max_tokens {MAX_TOKENS}; "
            f"{platform.machine()}, {platform.python_version()}.",
            "",
            "| router | p50 | p95 | share to fast |",
            "| --- | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    )
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
