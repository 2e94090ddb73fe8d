"""A simulated router pool for the scale bench: real WorkerPool, WorkerHandle, status
protos, accounting and Relay scheduling code, with channels that never send a call."""

from __future__ import annotations

import random
from typing import Any, cast

from modelyard.prefix import SCHEME, PrefixChain, chain_of_prompt
from modelyard.refs import model_key
from modelyard.v1 import model_pb2, worker_pb2
from router.accounting import Accounting
from router.breaker import BreakerBoard
from router.relay.generation import Relay
from router.scheduling.profiles import build_profiles
from router.state.latency import LatencyEstimates
from router.stats import RoutingStats
from router.workers import WorkerPool

WARM_PER_WORKER = 5  # of the models a worker lists, this many are warm
_GB = 1 << 30


class NoChannel:
    """Enough of a grpc channel for a stub to be made; scheduling never calls it."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def models(count: int) -> list[model_pb2.Model]:
    return [
        model_pb2.Model(
            name=f"m{i}",
            version="1",
            capabilities=model_pb2.Capabilities(chat=True, completion=True, context_length=8192),
            pricing=model_pb2.Pricing(input_usd_per_1k_tokens=0.001 * (1 + i % 3)),
            resources=model_pb2.Resources(memory_bytes=_GB),
        )
        for i in range(count)
    ]


def status(
    index: int,
    listed: list[model_pb2.Model],
    sequence: int,
    rng: random.Random,
    prefix: PrefixChain,
) -> worker_pb2.WorkerStatus:
    """A worker listing every model, a few warm (one in ten holding the shared prefix)."""
    warm = {(index + k) % len(listed) for k in range(min(WARM_PER_WORKER, len(listed)))}
    held = list(prefix.hashes) if index % 10 == 0 else []
    return worker_pb2.WorkerStatus(
        worker_id=f"w{index}",
        memory_budget_bytes=64 * _GB,
        memory_used_bytes=WARM_PER_WORKER * _GB,
        queued_tokens=rng.randrange(0, 4096),
        tokens_per_second=rng.uniform(20, 80),
        running_sequences=rng.randrange(0, 8),
        sequence=sequence,
        models=[
            worker_pb2.ModelStatus(
                name=m.name,
                version=m.version,
                state=worker_pb2.RESIDENCY_STATE_WARM
                if i in warm
                else worker_pb2.RESIDENCY_STATE_COLD,
                prefix_cache=worker_pb2.PrefixCacheSummary(scheme=SCHEME, link_hashes=held),
            )
            for i, m in enumerate(listed)
        ],
    )


def shared_prefix() -> PrefixChain:
    return chain_of_prompt("You are a helpful assistant. " * 40)


def router_pool(workers: int, listed: list[model_pb2.Model], seed: int = 0) -> WorkerPool:
    rng = random.Random(seed)
    pool = WorkerPool(
        [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:7000" for i in range(workers)],
        connect=lambda address: cast(Any, NoChannel()),
    )
    prefix = shared_prefix()
    for i, handle in enumerate(pool.workers):
        handle.set_status(status(i, listed, 1, rng, prefix))
        handle.watching = True
    return pool


def relay(pool: WorkerPool, sample_size: int) -> Relay:
    acct = Accounting(BreakerBoard(), LatencyEstimates(), RoutingStats())
    # Measured latencies on a few workers, as a router that has served a while has.
    for handle in pool.workers[::7]:
        acct.latency.observe(
            handle.address, model_key("m0", "1"), ttft_ms=120.0, inter_token_ms=25.0
        )
    return Relay(
        cast(Any, None),  # scheduling never resolves a name
        pool,
        profiles=build_profiles(sample_size=sample_size),
        accounting=acct,
    )
