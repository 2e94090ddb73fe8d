"""The prefix bench's mesh: a registry, llama.cpp workers serving SmolLM2 (one thread
each) and one router per routing policy over the same workers, as processes on loopback.

How each policy is configured (router settings, the request's objective is BALANCED):

- round_robin: `MODELYARD_ROUTER_PROFILE_PICKERS={"balanced": "round_robin"}`, scores
  ignored;
- load_only: `MODELYARD_ROUTER_PROFILE_WEIGHTS={"balanced": {"queue": 1}}` with the
  power_of_two picker (the LOAD objective's profile);
- affinity: `{"balanced": {"affinity": 1, "queue": 0.25}}`: the session key's rendezvous
  worker unless it is 4,096 tokens busier than the least loaded; the only policy whose
  requests carry session keys (the others route on what they see);
- prefix: the shipped BALANCED profile (latency 0.35, queue 0.25, prefix 0.2, cost 0.15,
  swap 0.15, affinity 0.1, which is idle without session keys); the llama.cpp workers
  publish prefix summaries, so its prefix routing is the precise kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc

from modelyard.bundled import smollm2_model
from modelyard.local_mesh import ServiceProcess, free_port, spawn_service
from modelyard.v1 import model_pb2, registry_pb2, registry_pb2_grpc, worker_pb2, worker_pb2_grpc

# KV cells per worker, split into a stream per live sequence (positions stay per sequence,
# under the trained 8,192); cached prefixes live in host memory.
CONTEXT_CELLS = 16_384
PARALLEL_SEQUENCES = 4
# Each worker's cached prefixes, in host memory: 16,384 tokens (~380 MB of SmolLM2 KV),
# the multi-turn working set of 8 sessions a worker at ~1,300 tokens each, with room for
# stale entries. At 0.5 the last turns' histories were evicted before they were reused.
CACHE_SHARE = 1.0


def _weights(table: Mapping[str, float]) -> str:
    return json.dumps({"balanced": table})


POLICIES: Mapping[str, Mapping[str, str]] = {
    "round_robin": {"MODELYARD_ROUTER_PROFILE_PICKERS": '{"balanced": "round_robin"}'},
    "load_only": {
        "MODELYARD_ROUTER_PROFILE_WEIGHTS": _weights({"queue": 1.0}),
        "MODELYARD_ROUTER_PROFILE_PICKERS": '{"balanced": "power_of_two"}',
    },
    "affinity": {"MODELYARD_ROUTER_PROFILE_WEIGHTS": _weights({"affinity": 1.0, "queue": 0.25})},
    "prefix": {},
}


def bench_model() -> model_pb2.Model:
    model = smollm2_model()
    model.load_options.context_length = CONTEXT_CELLS
    # A KV stream per sequence (4,096 cells each, past the longest history here): in one
    # unified cache each sequence's attention ran over every used cell, which made the
    # same run 1.6x slower at 4 live sequences.
    model.load_options.extra["kv_unified"] = "0"
    return model


def _addr() -> str:
    return f"127.0.0.1:{free_port()}"


def _registry(logs: Path) -> ServiceProcess:
    address = _addr()
    database = f"sqlite+aiosqlite:///{logs / 'registry.db'}"
    args = ["registry", "serve", "--address", address, "--database-url", database]
    return spawn_service("registry", args, address, logs / "registry.log")


def _worker(logs: Path, name: str, registry: str, cache_share: float) -> ServiceProcess:
    address = _addr()
    args = ["worker", "serve", "--address", address, "--worker-id", name, "--threads", "1"]
    env = {
        "MODELYARD_WORKER_CONTEXT_LENGTH": str(CONTEXT_CELLS),
        "MODELYARD_WORKER_MAX_PARALLEL_SEQUENCES": str(PARALLEL_SEQUENCES),
        # Opt-in (see MODELYARD_WORKER_PREFIX_CACHE_SHARE); every policy gets the same cache.
        "MODELYARD_WORKER_PREFIX_CACHE_SHARE": f"{cache_share:g}",
    }
    args += ["--registry-address", registry]
    return spawn_service(name, args, address, logs / f"{name}.log", env)


def _router(logs: Path, policy: str, registry: str, workers: list[str]) -> ServiceProcess:
    address = _addr()
    args = ["router", "serve", "--address", address, "--registry-address", registry]
    for worker in workers:
        args += ["--worker", worker]
    return spawn_service(
        f"router-{policy}", args, address, logs / f"{policy}.log", POLICIES[policy]
    )


@contextmanager
def prefix_pool(
    logs: Path,
    workers: int,
    policies: Sequence[str] = tuple(POLICIES),
    cache_share: float = CACHE_SHARE,
) -> Iterator[dict[str, str]]:
    """Start the mesh with the model warm on every worker; yields {policy: router address}.
    `cache_share`: each worker's prefix cache, a multiple of CONTEXT_CELLS in tokens."""
    services: list[ServiceProcess] = []
    try:
        registry = _registry(logs)
        services.append(registry)
        pool = [_worker(logs, f"w{i}", registry.address, cache_share) for i in range(workers)]
        services += pool
        for service in services:
            service.wait_healthy(120)
        addresses = [w.address for w in pool]
        routers = {p: _router(logs, p, registry.address, addresses) for p in policies}
        services += routers.values()
        for router in routers.values():
            router.wait_healthy(120)
        model = bench_model()
        with grpc.insecure_channel(registry.address) as channel:
            registry_pb2_grpc.RegistryServiceStub(channel).RegisterModel(
                registry_pb2.RegisterModelRequest(model=model), timeout=30
            )
        for address in addresses:  # all warm: the comparison is routing, not loading
            with grpc.insecure_channel(address) as channel:
                worker_pb2_grpc.WorkerServiceStub(channel).LoadModel(
                    worker_pb2.LoadModelRequest(model=model), timeout=300
                )
        yield {p: r.address for p, r in routers.items()}
    finally:
        for service in reversed(services):
            service.stop()
