"""Routes, A/B arms, fallbacks, breakers, stats and feedback through a real router server."""

from __future__ import annotations

import grpc
import pytest

from modelyard.v1 import common_pb2, model_pb2, router_pb2, worker_pb2
from tests.unit.router.doubles import (
    LOOP_SCOPE,
    Fail,
    RegistryUnderTest,
    WorkerFactory,
    free_address,
    make_model,
    running_router,
    wait_until,
)
from tests.unit.router.test_relay import collect, request

pytestmark = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)


def chat_route(fallbacks: tuple[str, ...] = ()) -> model_pb2.Route:
    return model_pb2.Route(
        name="chat",
        arms=[model_pb2.RouteArm(name="candidate", model="tiny@2", weight=1)],
        fallbacks=list(fallbacks),
        sticky_sessions=True,
    )


async def test_stats_count_requests_and_feedback_needs_a_known_request(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    # The router prices the usage (3 in, 2 out) from the registered prices: 0.001 USD.
    registry.fake.models[0].pricing.input_usd_per_1k_tokens = 0.1
    registry.fake.models[0].pricing.output_usd_per_1k_tokens = 0.35
    worker = await start_worker("w1")
    async with running_router(
        registry.address, [worker.address], reference_usd_per_1k_tokens=0.01
    ) as router:
        await collect(router.stub, request(request_id="fb-1"))
        await router.stub.RecordFeedback(
            router_pb2.RecordFeedbackRequest(request_id="fb-1", score=1)
        )
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await router.stub.RecordFeedback(router_pb2.RecordFeedbackRequest(request_id="nope"))
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await router.stub.RecordFeedback(
                router_pb2.RecordFeedbackRequest(request_id="fb-1", score=1)
            )
        bad = []
        for score in (float("nan"), float("inf"), 1e9):
            # Arguments are checked before the lookup: an unknown id with a bad score is
            # INVALID_ARGUMENT, not NOT_FOUND.
            with pytest.raises(grpc.aio.AioRpcError) as invalid:
                await router.stub.RecordFeedback(
                    router_pb2.RecordFeedbackRequest(request_id="nope", score=score)
                )
            bad.append(invalid.value.code())
        stats = await router.stub.GetRoutingStats(router_pb2.GetRoutingStatsRequest())

    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert again.value.code() == grpc.StatusCode.NOT_FOUND
    assert bad == [grpc.StatusCode.INVALID_ARGUMENT] * 3
    (m,) = stats.models
    t = m.traffic
    assert (m.model, m.version, t.requests, t.errors) == ("tiny", "1", 1, 0)
    assert (t.input_tokens, t.output_tokens, t.feedback_count) == (3, 2, 1)
    assert t.cost_usd == pytest.approx(0.001)
    assert t.savings_usd == pytest.approx(0.01 * 5 / 1000 - 0.001)
    assert t.ttft.p50_ms > 0 and t.total_latency.p99_ms >= t.ttft.p50_ms


async def test_route_arm_is_named_in_started_and_stats(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    registry.fake.routes = [chat_route()]
    worker = await start_worker("w1")
    async with running_router(registry.address, [worker.address], watch=True) as router:
        await wait_until(lambda: router.catalog.cache is not None)
        events = await collect(router.stub, request(model="chat"))
        models = await router.stub.ListModels(router_pb2.RouterServiceListModelsRequest())
        stats = await router.stub.GetRoutingStats(router_pb2.GetRoutingStatsRequest(route="chat"))

    s = events[0].started
    assert (s.model, s.version, s.route, s.arm, s.worker_id) == (
        "tiny",
        "2",
        "chat",
        "candidate",
        "w1",
    )
    assert (worker.fake.requests[0].route, worker.fake.requests[0].arm) == ("chat", "candidate")
    assert [r.name for r in models.routes] == ["chat"]
    (arm,) = stats.arms
    assert (arm.arm, arm.model, arm.traffic.requests) == ("candidate", "tiny@2", 1)


async def test_route_falls_back_to_the_next_model_before_the_first_token(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    registry.fake.routes = [chat_route(fallbacks=("tiny@1",))]
    worker = await start_worker("w1")
    worker.fake.failing_models = {"tiny@2"}
    async with running_router(registry.address, [worker.address], watch=True) as router:
        await wait_until(lambda: router.catalog.cache is not None)
        events = await collect(router.stub, request(model="chat"))

    s = events[0].started
    assert (s.model, s.version, s.attempt) == ("tiny", "1", 2)
    assert [f"{r.model.name}@{r.model.version}" for r in worker.fake.requests] == [
        "tiny@2",
        "tiny@1",
    ]


async def test_routing_continues_from_the_watch_cache_while_the_registry_is_down(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker("w1")
    async with running_router(registry.address, [worker.address], watch=True) as router:
        await wait_until(lambda: router.catalog.cache is not None)
        await registry.server.stop(0)
        events = await collect(router.stub, request())
        auto = await collect(router.stub, request(model="auto"))

    assert events[0].started.model == "tiny" and auto[-1].WhichOneof("event") == "finished"
    assert registry.fake.get_calls == 0  # resolved from the cache, not GetModel


async def test_breaker_opens_on_a_failing_worker_and_traffic_goes_elsewhere(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    broken = await start_worker("w-broken", [Fail(grpc.StatusCode.UNAVAILABLE, "boom")])
    good = await start_worker("w-ok")
    async with running_router(
        registry.address, [broken.address, good.address], breaker_failures=2
    ) as router:
        await wait_until(lambda: all(h.watching for h in router.pool.workers))
        served = []
        for i in range(6):
            # Distinct prompts: a repeated one would stay on the worker holding its prefix.
            req = request()
            req.prompt = f"Hello {i}"
            served.append((await collect(router.stub, req))[0].started.worker_id)
        workers = await router.stub.ListWorkers(router_pb2.ListWorkersRequest())

    assert served == ["w-ok"] * 6
    assert len(broken.fake.requests) == 2  # then its breaker opened
    states = {w.worker_id: w.breaker for w in workers.workers}
    assert states == {
        "w-broken": router_pb2.BREAKER_STATE_OPEN,
        "w-ok": router_pb2.BREAKER_STATE_CLOSED,
    }


async def test_auto_with_cost_objective_picks_the_cheaper_model(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    cheap = make_model("cheap", "1")
    cheap.pricing.input_usd_per_1k_tokens = cheap.pricing.output_usd_per_1k_tokens = 0.001
    dear = make_model("dear", "1")
    dear.pricing.input_usd_per_1k_tokens = dear.pricing.output_usd_per_1k_tokens = 0.01
    registry.fake.models = [dear, cheap]
    worker = await start_worker("w1")
    worker.fake.set_models(
        worker_pb2.ModelStatus(name="dear", version="1", state=worker_pb2.RESIDENCY_STATE_WARM)
    )
    async with running_router(registry.address, [worker.address], watch=True) as router:
        await wait_until(lambda: router.catalog.cache is not None)
        req = request(model="auto")
        req.hints.objective = common_pb2.OBJECTIVE_COST
        events = await collect(router.stub, req)
        req.hints.max_cost_per_1k_tokens = 0.0001
        with pytest.raises(grpc.aio.AioRpcError) as too_dear:
            await collect(router.stub, req)

    assert events[0].started.model == "cheap"
    assert too_dear.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cost_ceiling" in (too_dear.value.details() or "")


async def test_dead_worker_is_unavailable_and_counted_as_an_error(
    registry: RegistryUnderTest,
) -> None:
    async with running_router(registry.address, [free_address()]) as router:
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(router.stub, request())
        stats = await router.stub.GetRoutingStats(router_pb2.GetRoutingStatsRequest(model="tiny"))

    assert stats.models[0].traffic.errors == 1


async def test_a_model_newer_than_the_watch_cache_resolves_through_the_registry(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    # Registered after the router's snapshot, its change not yet streamed: the router
    # asks the registry instead of answering NOT_FOUND.
    worker = await start_worker("w1")
    async with running_router(registry.address, [worker.address], watch=True) as router:
        await wait_until(lambda: router.catalog.cache is not None)
        registry.fake.models.append(make_model("fresh", "1"))
        events = await collect(router.stub, request(model="fresh"))

    assert (events[0].started.model, events[-1].WhichOneof("event")) == ("fresh", "finished")
    assert registry.fake.get_calls == 1
