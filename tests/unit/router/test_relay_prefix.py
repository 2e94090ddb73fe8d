"""The relay's part in prefix routing, over the worker doubles: it passes cached-token
counts through, remembers where it sent each prefix for workers without a summary, and
trusts a worker's pushed summary over its own history."""

from __future__ import annotations

import pytest

from modelyard.prefix import SCHEME, chain_of_prompt
from modelyard.refs import model_key
from modelyard.v1 import common_pb2, router_pb2, worker_pb2
from tests.unit.router.doubles import (
    LOOP_SCOPE,
    RegistryUnderTest,
    WorkerFactory,
    delta,
    running_router,
    started,
    wait_until,
)
from tests.unit.router.test_relay import collect, request

pytestmark = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)

LONG_PROMPT = "The same long context, every time. " * 40  # six 256-byte links
TINY = model_key("tiny", "1")


def long_request() -> router_pb2.GenerateRequest:
    req = request()
    req.prompt = LONG_PROMPT
    return req


def cached_finish() -> worker_pb2.WorkerServiceGenerateResponse:
    return worker_pb2.WorkerServiceGenerateResponse(
        finished=common_pb2.GenerationFinished(
            finish_reason=common_pb2.FINISH_REASON_STOP,
            usage=common_pb2.Usage(input_tokens=300, output_tokens=1, cached_input_tokens=200),
            timings=common_pb2.Timings(queue_ms=5.0, ttft_ms=405.0, total_ms=410.0),
        )
    )


async def test_cached_tokens_pass_through_and_teach_the_prefill_estimate(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker("w1", [started(), delta("a", 1), cached_finish()])
    async with running_router(registry.address, [worker.address]) as router:
        events = await collect(router.stub, long_request())
        estimate = router.parts.accounting.latency.get(worker.address, TINY)

    usage = events[-1].finished.usage
    assert (usage.input_tokens, usage.cached_input_tokens) == (300, 200)
    assert estimate.prefill_ms_per_token == 4.0  # 400 ms for the 100 evaluated tokens


async def test_a_repeated_prefix_returns_to_the_worker_the_router_sent_it_to(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    one, two = await start_worker("w1"), await start_worker("w2")
    async with running_router(registry.address, [one.address, two.address]) as router:
        await wait_until(lambda: all(h.watching for h in router.pool.workers))
        served = [(await collect(router.stub, long_request()))[0].started.worker_id]
        for _ in range(3):  # equal load: ties would alternate between the two
            served.append((await collect(router.stub, long_request()))[0].started.worker_id)
        history = router.parts.relay.load.history

    assert len(set(served)) == 1, served
    first = one if served[0] == "w1" else two
    assert chain_of_prompt(LONG_PROMPT).held(history.held_by(TINY, first.address))[0] == 6


async def test_a_published_summary_decides_and_is_not_second_guessed_by_history(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    one, two = await start_worker("w1"), await start_worker("w2")
    status = worker_pb2.ModelStatus(name="tiny", version="1")
    status.prefix_cache.scheme = SCHEME
    status.prefix_cache.link_hashes.extend(chain_of_prompt(LONG_PROMPT).hashes[:4])
    two.fake.set_models(status)
    empty = worker_pb2.ModelStatus(name="tiny", version="1")
    empty.prefix_cache.scheme = SCHEME  # publishes, holds nothing
    one.fake.set_models(empty)
    async with running_router(registry.address, [one.address, two.address]) as router:
        handles = router.pool.workers
        await wait_until(lambda: all(h.prefix_sets for h in handles))
        served = [(await collect(router.stub, long_request()))[0].started.worker_id for _ in "abc"]
        history = router.parts.relay.load.history

    assert served == ["w2"] * 3
    assert len(history) == 0  # precise workers leave no guesses behind
