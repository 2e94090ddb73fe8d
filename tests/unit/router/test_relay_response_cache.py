"""The response cache through a real router server (gRPC on loopback) and scripted
WorkerService doubles: what the worker is asked (its request log) is the proof of a
hit or a miss."""

from __future__ import annotations

import asyncio
import socket

import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from modelyard.bearer import bearer_metadata
from modelyard.local_mesh import free_port
from modelyard.v1 import common_pb2, model_pb2, registry_pb2, router_pb2, router_pb2_grpc
from router.cache import CACHE_HEADER
from router.cache.hook import HIT_ATTRIBUTE
from router.openai.server import start_http_front
from tests.stream_shape import shape
from tests.unit.router.doubles import (
    LOOP_SCOPE,
    Gate,
    RegistryUnderTest,
    RouterUnderTest,
    WorkerFactory,
    happy_script,
    running_router,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)

GREEDY = common_pb2.SamplingParams(max_tokens=8, temperature=0)


def cached_route(model: str = "tiny@1", *, per_api_key: bool = False) -> model_pb2.Route:
    return model_pb2.Route(
        name="chat",
        arms=[model_pb2.RouteArm(name="a", model=model, weight=1)],
        response_cache=model_pb2.ResponseCachePolicy(
            enabled=True, ttl_seconds=60, per_api_key=per_api_key
        ),
    )


def request(
    sampling: common_pb2.SamplingParams = GREEDY, prompt: str = "Hello"
) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(model="chat", prompt=prompt, sampling=sampling)


async def generate(
    router: RouterUnderTest, req: router_pb2.GenerateRequest, key: str = ""
) -> list[router_pb2.GenerateResponse]:
    stub: router_pb2_grpc.RouterServiceAsyncStub = router.stub
    metadata = bearer_metadata(key) if key else None
    return [e async for e in stub.Generate(req, timeout=10, metadata=metadata)]


def text(events: list[router_pb2.GenerateResponse]) -> str:
    return "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")


async def synced(router: RouterUnderTest) -> None:
    await wait_until(lambda: router.parts.cache.route("chat") is not None)


async def test_a_repeated_greedy_request_is_answered_by_the_router_alone(
    registry: RegistryUnderTest, start_worker: WorkerFactory, spans: InMemorySpanExporter
) -> None:
    registry.fake.routes = [cached_route()]
    worker = await start_worker("w1")
    async with running_router(registry.address, [worker.address], watch=True) as router:
        await synced(router)
        first = await generate(router, request())
        second = await generate(router, request())
        stats = await router.stub.GetRoutingStats(router_pb2.GetRoutingStatsRequest())
        lookups = router.parts.metrics.response_cache.lookups

    assert len(worker.fake.requests) == 1  # the second never reached a worker
    assert text(second) == text(first) == "Hello"
    assert shape(second) == ["started", "delta", "finished"]
    s = second[0].started
    assert (s.model, s.version, s.route, s.arm, s.worker_id, s.attempt) == (
        "tiny", "1", "chat", "a", "", 0,
    )  # fmt: skip
    done = second[-1].finished
    assert done.cached and not first[-1].finished.cached
    assert done.usage == first[-1].finished.usage
    assert done.cost.total_usd == 0 and done.finish_reason == first[-1].finished.finish_reason
    (m,) = stats.models
    assert (m.traffic.requests, m.traffic.cached_requests) == (2, 1)
    assert lookups.labels(result="hit")._value.get() == 1
    routed = [dict(s.attributes or {}) for s in spans.get_finished_spans()]
    routed = [a for a in routed if HIT_ATTRIBUTE in a]
    assert [a[HIT_ATTRIBUTE] for a in routed] == [False, True]
    for a in routed:  # a hit's span says what a worker's answer would
        assert a["gen_ai.response.model"] == "tiny@1"
        assert a["gen_ai.usage.output_tokens"] == 2


async def test_identical_requests_in_flight_share_one_worker_call(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    registry.fake.routes = [cached_route()]
    worker = await start_worker("w1")
    opened = asyncio.Event()
    worker.fake.script = [Gate(opened), *happy_script()]
    async with running_router(registry.address, [worker.address], watch=True) as router:
        await synced(router)
        metrics = router.parts.metrics
        lookups = metrics.response_cache.lookups
        first = asyncio.create_task(generate(router, request()))
        await wait_until(lambda: len(worker.fake.requests) == 1)
        second = asyncio.create_task(generate(router, request()))
        # Both looked up and missed; the second now waits on the first's flight.
        await wait_until(lambda: lookups.labels(result="miss")._value.get() == 2)
        opened.set()
        answers = [await first, await second]
        replayed = metrics.tokens.labels(model="tiny@1", kind="replayed")._value.get()
        shared = lookups.labels(result="shared")._value.get()

    assert len(worker.fake.requests) == 1  # one worker call for both
    assert text(answers[0]) == text(answers[1]) == "Hello"
    assert [a[-1].finished.cached for a in answers] == [False, True]
    assert shared == 1 and replayed == 2


async def test_sampled_requests_are_never_cached(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    registry.fake.routes = [cached_route()]
    worker = await start_worker("w1")
    sampled = common_pb2.SamplingParams(max_tokens=8, temperature=0.7)
    async with running_router(registry.address, [worker.address], watch=True) as router:
        await synced(router)
        for _ in range(3):
            events = await generate(router, request(sampled))
            assert not events[-1].finished.cached
        # A seed makes a sampled request repeatable: that one is cached.
        seeded = common_pb2.SamplingParams(max_tokens=8, temperature=0.7, seed=3)
        await generate(router, request(seeded))
        again = await generate(router, request(seeded))

    assert again[-1].finished.cached
    assert len(worker.fake.requests) == 4


async def test_a_new_model_version_never_meets_the_old_entry(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    registry.fake.routes = [cached_route("tiny@1")]
    worker = await start_worker("w1")
    async with running_router(registry.address, [worker.address], watch=True) as router:
        await synced(router)
        await generate(router, request())
        # The route moves to version 2, as a Watch change would bring it.
        cache = router.parts.cache
        cache.apply(
            registry_pb2.WatchResponse(
                change=registry_pb2.CatalogChange(
                    revision=cache.revision + 1,
                    kind=registry_pb2.CHANGE_KIND_ROUTE_PUT,
                    route=cached_route("tiny@2"),
                )
            )
        )
        on_new = await generate(router, request())
        repeat = await generate(router, request())

    assert [r.model.version for r in worker.fake.requests] == ["1", "2"]
    assert not on_new[-1].finished.cached and on_new[0].started.version == "2"
    assert repeat[-1].finished.cached and repeat[0].started.version == "2"


async def test_per_api_key_routes_keep_each_key_s_answers_apart(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    registry.fake.routes = [cached_route(per_api_key=True)]
    worker = await start_worker("w1")
    keys = "alice:alice-secret,bob:bob-secret"
    async with running_router(
        registry.address, [worker.address], watch=True, api_keys=keys
    ) as router:
        await synced(router)
        alice = [await generate(router, request(), "alice-secret") for _ in range(2)]
        bob = [await generate(router, request(), "bob-secret") for _ in range(2)]

    assert [e[-1].finished.cached for e in alice + bob] == [False, True, False, True]
    assert len(worker.fake.requests) == 2


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_store_that_is_down_never_fails_a_request(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    registry.fake.routes = [cached_route()]
    worker = await start_worker("w1")
    async with running_router(
        registry.address,
        [worker.address],
        watch=True,
        response_cache_redis_url=f"redis://127.0.0.1:{closed_port()}/0",
    ) as router:
        await synced(router)
        answers = [await generate(router, request()) for _ in range(2)]
        errors = router.parts.metrics.response_cache.backend_errors
        assert router.parts.response_cache is not None
        await router.parts.response_cache.close()

    assert [text(a) for a in answers] == ["Hello", "Hello"]
    assert not any(a[-1].finished.cached for a in answers)
    assert len(worker.fake.requests) == 2
    # The first lookup failed; the store was then left alone (no second wait on it).
    assert errors.labels(op="get")._value.get() == 1
    assert errors.labels(op="put")._value.get() == 0


async def test_the_openai_front_goes_through_the_cache_and_says_so(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    registry.fake.routes = [cached_route()]
    worker = await start_worker("w1")
    async with running_router(registry.address, [worker.address], watch=True) as router:
        await synced(router)
        http = await start_http_front(f"127.0.0.1:{free_port()}", router.parts.api)
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{http.port}/v1", api_key="x", max_retries=0
        )
        try:
            replies = [
                await client.chat.completions.with_raw_response.create(
                    model="chat",
                    messages=[{"role": "user", "content": "Hello"}],
                    temperature=0,
                    stream=stream,
                )
                for stream in (False, False, True)
            ]
            bodies = [
                await client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "Hello"}], temperature=0
                )
            ]
        finally:
            await client.close()
            await http.stop()

    assert [r.headers[CACHE_HEADER] for r in replies] == ["miss", "hit", "hit"]
    assert len(worker.fake.requests) == 1
    assert bodies[0].choices[0].message.content == "Hello"
