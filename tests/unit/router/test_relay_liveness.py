"""Silence timeouts in the relay (issue #11, frozen workers), against scripted workers.

A worker that sends keepalives (advertised in its status, or shown by a
GenerationAccepted on the call) and then goes silent is abandoned before the first
token, retried elsewhere and ejected; after the first token its stream ends UNAVAILABLE.
A worker that never said it sends keepalives (an older release) is never timed.
"""

from __future__ import annotations

import grpc
import pytest

from modelyard.errors import from_rpc_error
from modelyard.v1 import common_pb2, router_pb2, router_pb2_grpc, worker_pb2
from router.relay.silence import SilenceWatch
from tests.stream_shape import shape
from tests.unit.router.doubles import (
    LOOP_SCOPE,
    Pause,
    RegistryUnderTest,
    Step,
    WorkerFactory,
    WorkerUnderTest,
    delta,
    finished,
    running_router,
    started,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)

SILENCE_S = 0.5
OPEN = router_pb2.BREAKER_STATE_OPEN
CLOSED = router_pb2.BREAKER_STATE_CLOSED


def accepted(interval_ms: int = 100) -> worker_pb2.WorkerServiceGenerateResponse:
    event = worker_pb2.WorkerServiceGenerateResponse(accepted=worker_pb2.GenerationAccepted())
    event.accepted.keepalive_interval.FromMilliseconds(interval_ms)
    return event


def keepalive(
    phase: worker_pb2.GenerationPhase.ValueType = worker_pb2.GENERATION_PHASE_QUEUED,
) -> worker_pb2.WorkerServiceGenerateResponse:
    return worker_pb2.WorkerServiceGenerateResponse(
        keepalive=worker_pb2.GenerationKeepalive(phase=phase)
    )


def answer() -> list[Step]:
    return [accepted(), started(), delta("Hel", 1), delta("lo", 2), finished(2)]


def advertise(worker: WorkerUnderTest, interval_ms: int = 100) -> None:
    """The worker's pushed status says it sends keepalives (set before the router starts)."""
    worker.fake.status.generate_keepalive_interval.FromMilliseconds(interval_ms)


def ask() -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model="tiny", prompt="Hello", sampling=common_pb2.SamplingParams(max_tokens=8)
    )


async def collect(
    stub: router_pb2_grpc.RouterServiceAsyncStub, deadline_s: float = 10.0
) -> list[router_pb2.GenerateResponse]:
    return [event async for event in stub.Generate(ask(), timeout=deadline_s)]


async def test_a_silent_worker_is_abandoned_retried_elsewhere_and_ejected(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    frozen = await start_worker("frozen", [Pause(60.0)])
    healthy = await start_worker("healthy", answer())
    for w in (frozen, healthy):
        advertise(w)
    # A long queue on the healthy worker: the frozen one is the scheduler's first pick.
    healthy.fake.status.queued_tokens = 100_000
    async with running_router(
        registry.address, [frozen.address, healthy.address], silence_timeout_s=SILENCE_S
    ) as router:
        breakers = router.parts.accounting.breakers
        # Both statuses in (the queue bias included) before the first pick.
        await wait_until(lambda: all(h.watching for h in router.pool.workers))
        first = await collect(router.stub)
        assert first[0].started.worker_id == "healthy" and first[0].started.attempt == 2
        assert len(frozen.fake.requests) == 1
        assert breakers.state(frozen.address) == OPEN  # one silent attempt ejects it
        assert breakers.state(healthy.address) == CLOSED
        await frozen.fake.cancelled.wait()  # the abandoned call was cancelled
        second = await collect(router.stub)
        # Ejected: the next request goes straight to the healthy worker.
        assert second[0].started.attempt == 1 and second[0].started.worker_id == "healthy"
        assert len(frozen.fake.requests) == 1


async def test_keepalives_keep_a_long_wait_alive_and_are_never_relayed(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    # Three silence timeouts of queueing and loading, one keepalive every 0.1 s.
    waiting: list[Step] = [accepted()]
    for _ in range(15):
        waiting += [Pause(0.1), keepalive(worker_pb2.GENERATION_PHASE_LOADING)]
    worker = await start_worker("w1", [*waiting, *answer()[1:3], keepalive(), *answer()[3:]])
    advertise(worker)
    async with running_router(
        registry.address, [worker.address], silence_timeout_s=SILENCE_S
    ) as router:
        events = await collect(router.stub)
        assert router.parts.accounting.breakers.state(worker.address) == CLOSED
    assert shape(events) == ["started", "delta", "finished"]
    assert events[0].started.attempt == 1


async def test_an_old_worker_without_acknowledgements_is_never_timed(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    # No keepalive interval in its status, no GenerationAccepted: a release before #11.
    worker = await start_worker(
        "old", [Pause(3 * SILENCE_S), started(), delta("Hi", 1), finished(1)]
    )
    async with running_router(
        registry.address, [worker.address], silence_timeout_s=SILENCE_S
    ) as router:
        events = await collect(router.stub)
        assert router.parts.accounting.breakers.state(worker.address) == CLOSED
    assert events[0].started.attempt == 1 and events[-1].finished.usage.output_tokens == 1


async def test_an_acknowledgement_on_the_call_turns_the_silence_rule_on(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    # The status does not advertise keepalives (not pushed yet), the call's ack does.
    worker = await start_worker("w1", [accepted(), Pause(60.0)])
    async with running_router(
        registry.address, [worker.address], silence_timeout_s=SILENCE_S
    ) as router:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await collect(router.stub, deadline_s=30.0)
        assert router.parts.accounting.breakers.state(worker.address) == OPEN
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "sent nothing for 0.5s before the first token" in (failed.value.details() or "")


async def test_silence_after_the_first_token_ends_the_stream_and_ejects(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker("w1", [accepted(), started(), delta("Hel", 1), Pause(60.0)])
    advertise(worker)
    async with running_router(
        registry.address,
        [worker.address],
        silence_timeout_s=SILENCE_S,
        stream_silence_timeout_s=2 * SILENCE_S,
    ) as router:
        seen: list[str | None] = []
        with pytest.raises(grpc.aio.AioRpcError) as broken:
            async for event in router.stub.Generate(ask(), timeout=30.0):
                seen.append(event.WhichOneof("event"))
        assert router.parts.accounting.breakers.state(worker.address) == OPEN
    assert seen == ["started", "delta"]
    err = from_rpc_error(broken.value)
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "WORKER_FAILED_MID_STREAM"
    assert "sent nothing for 1.0s" in err.message


async def test_a_silence_the_callers_deadline_ends_first_is_left_to_the_deadline() -> None:
    now = [100.0]
    status = worker_pb2.WorkerStatus()
    status.generate_keepalive_interval.FromMilliseconds(500)

    def watch(deadline: float | None) -> SilenceWatch:
        return SilenceWatch.for_status(status, (2.0, 10.0), deadline, lambda: now[0])

    assert watch(None).timeout_s() == 2.0
    assert watch(105.0).timeout_s() == 2.0
    # 1.5 s left: the call's own deadline ends it first, as DEADLINE_EXCEEDED; a silence
    # timer racing it could blame (and eject) a worker for the caller's short deadline.
    assert watch(101.5).timeout_s() is None
    late = watch(105.0)
    late.committed = True  # after the first token the longer bound, same rule
    assert late.timeout_s() is None
    now[0] = 90.0
    assert late.timeout_s() == 10.0
    # A worker that never said it sends keepalives is not timed at all.
    assert SilenceWatch.for_status(None, (2.0, 10.0), None, lambda: now[0]).timeout_s() is None
