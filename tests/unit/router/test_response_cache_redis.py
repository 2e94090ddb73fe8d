"""The shared response cache against a real redis-server (started per module on a free
loopback port): router replicas share entries, the store expires them, and a server
that goes away costs lookups, never requests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager

import pytest
import redis.asyncio as aioredis

from modelyard.v1 import common_pb2, model_pb2, router_pb2
from router.cache.cache import ResponseCache
from router.cache.entry import Entry
from router.cache.remote import RemoteBackend
from router.metrics import RouterMetrics
from tests.redis_server import redis_server
from tests.unit.router.doubles import (
    LOOP_SCOPE,
    RegistryUnderTest,
    RouterUnderTest,
    WorkerFactory,
    running_router,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)

PREFIX = "test:rc:"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def entry(text: str = "Hello") -> Entry:
    return Entry(
        (common_pb2.TokenDelta(text=text, token_ids=[1, 2]),),
        common_pb2.GenerationFinished(
            finish_reason=common_pb2.FINISH_REASON_STOP,
            usage=common_pb2.Usage(input_tokens=3, output_tokens=2),
        ),
    )


def shared(url: str, max_entry_bytes: int = 4096) -> ResponseCache:
    backend = RemoteBackend(url, prefix=PREFIX, max_entry_bytes=max_entry_bytes, timeout_s=5.0)
    return ResponseCache(backend, timeout_s=5.0, name="redis")


async def test_two_cache_instances_share_an_entry_that_the_store_expires(redis_url: str) -> None:
    one, two = shared(redis_url), shared(redis_url)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await one.put("k1", entry(), 120)
        found = await two.get("k1")
        ttl = await raw.ttl(PREFIX + "k1")
        small = shared(redis_url, max_entry_bytes=10)
        await small.put("big", entry("x" * 100), 120)
        big_stored = await raw.exists(PREFIX + "big")
        await small.close()
    finally:
        await raw.aclose()
        await one.close()
        await two.close()

    assert found is not None and found.deltas[0].text == "Hello"
    assert found.finished.usage.output_tokens == 2
    assert 0 < ttl <= 120  # SET EX: the server drops it, no router has to
    assert big_stored == 0  # over the per-entry cap: never written


def cached_route() -> model_pb2.Route:
    return model_pb2.Route(
        name="chat",
        arms=[model_pb2.RouteArm(name="a", model="tiny@1", weight=1)],
        response_cache=model_pb2.ResponseCachePolicy(enabled=True),
    )


async def generate(router: RouterUnderTest) -> list[router_pb2.GenerateResponse]:
    req = router_pb2.GenerateRequest(
        model="chat", prompt="Hi there", sampling=common_pb2.SamplingParams(temperature=0)
    )
    return [e async for e in router.stub.Generate(req, timeout=10)]


def replica(
    registry: str, workers: list[str], redis_url: str
) -> AbstractAsyncContextManager[RouterUnderTest]:
    # A roomy store deadline: this machine is shared, and a lookup that times out is a
    # miss (right, but not what these tests are about).
    return running_router(
        registry,
        workers,
        watch=True,
        response_cache_redis_url=redis_url,
        response_cache_timeout_s=5.0,
    )


async def test_a_replica_answers_from_what_another_replica_stored(
    registry: RegistryUnderTest, start_worker: WorkerFactory, redis_url: str
) -> None:
    registry.fake.routes = [cached_route()]
    worker = await start_worker("w1")
    address, workers = registry.address, [worker.address]
    async with (
        replica(address, workers, redis_url) as first,
        replica(address, workers, redis_url) as second,
    ):
        for started in (first, second):
            cache = started.parts.cache
            await wait_until(lambda c=cache: c.route("chat") is not None)  # type: ignore[misc]
        served = await generate(first)
        from_cache = await generate(second)
        for router in (first, second):
            assert router.parts.response_cache is not None
            await router.parts.response_cache.close()

    assert len(worker.fake.requests) == 1
    assert not served[-1].finished.cached and from_cache[-1].finished.cached
    # A replica with no worker at all still answers what the cache holds.
    async with replica(address, [], redis_url) as bare:
        await wait_until(lambda: bare.parts.cache.route("chat") is not None)
        without_workers = await generate(bare)
        assert bare.parts.response_cache is not None
        await bare.parts.response_cache.close()
    assert without_workers[-1].finished.cached and len(worker.fake.requests) == 1
    # The same text and tokens; how they are split may differ: the router joins deltas
    # that wait on the client (CoalescingWriter), and a replay's come all at once.
    assert _tokens(from_cache) == _tokens(served) == ("Hello", [1, 2])


def _tokens(events: list[router_pb2.GenerateResponse]) -> tuple[str, list[int]]:
    deltas = [e.delta for e in events if e.HasField("delta")]
    return "".join(d.text for d in deltas), [i for d in deltas for i in d.token_ids]


async def test_a_store_that_stops_costs_lookups_not_requests(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    metrics = RouterMetrics().response_cache
    with redis_server(tmp_path_factory.mktemp("redis-stops")) as url:
        backend = RemoteBackend(url, prefix=PREFIX, max_entry_bytes=4096, timeout_s=5.0)
        cache = ResponseCache(backend, timeout_s=5.0, metrics=metrics, name="redis", pause_s=0)
        await cache.put("k", entry(), 60)
        assert await cache.get("k") is not None
    # The server is gone: lookups are misses, stores are skipped, both counted.
    assert await cache.get("k") is None
    await cache.put("k", entry(), 60)
    await cache.close()

    assert metrics.lookups.labels(result="hit")._value.get() == 1
    assert metrics.backend_errors.labels(op="get")._value.get() == 1
    assert metrics.backend_errors.labels(op="put")._value.get() == 1
