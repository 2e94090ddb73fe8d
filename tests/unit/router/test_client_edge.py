"""What a client may send the router, decided at the edge before any registry or worker
call: unknown enum values, priorities above the key's ceiling, oversized input.

Regressions for issue #11: `hints.objective = 7` was INTERNAL "KeyError: 7"; `priority = 99`
was accepted; any client could send PRIORITY_CRITICAL and shed other clients' requests;
64 MB of chat messages were parsed in full before any limit applied.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from modelyard.bearer import bearer_metadata
from modelyard.errors import from_rpc_error
from modelyard.v1 import common_pb2, router_pb2
from tests.unit.router.doubles import (
    LOOP_SCOPE,
    Pause,
    RegistryUnderTest,
    WorkerFactory,
    delta,
    finished,
    running_router,
    started,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)

KEYS = ["app:k-app", "ops:k-ops"]


def request(**fields: object) -> router_pb2.GenerateRequest:
    base = router_pb2.GenerateRequest(
        model="tiny", prompt="Hello", sampling=common_pb2.SamplingParams(max_tokens=4)
    )
    for name, value in fields.items():
        if name == "objective":
            base.hints.objective = value  # type: ignore[assignment]
        elif name == "sampling":
            base.sampling.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(base, name, value)
    return base


async def refusal(stub: object, req: router_pb2.GenerateRequest, key: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Generate(req, timeout=10, metadata=bearer_metadata(key)):  # type: ignore[attr-defined]
            pass
    return caught.value


async def test_unknown_enums_and_priorities_above_the_ceiling_are_refused_up_front(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker()
    async with running_router(
        registry.address,
        [worker.address],
        api_keys=KEYS,
        key_priority_ceilings={"ops": "PRIORITY_CRITICAL"},
    ) as router:
        err = await refusal(router.stub, request(objective=7), "k-app")
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in from_rpc_error(err).violations] == ["hints.objective"]
        err = await refusal(router.stub, request(priority=99), "k-app")
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "priority" in (
            err.details() or ""
        )

        critical = request(priority=common_pb2.PRIORITY_CRITICAL)
        err = await refusal(router.stub, critical, "k-app")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert from_rpc_error(err).reason == "PRIORITY_NOT_ALLOWED" and "'app'" in (
            err.details() or ""
        )
        assert registry.fake.get_calls == 0 and worker.fake.requests == []

        # The key allowed to may; HIGH stays open to everyone.
        events = [
            e
            async for e in router.stub.Generate(
                critical, timeout=10, metadata=bearer_metadata("k-ops")
            )
        ]
        assert events[-1].WhichOneof("event") == "finished"
        high = request(priority=common_pb2.PRIORITY_HIGH)
        events = [
            e
            async for e in router.stub.Generate(high, timeout=10, metadata=bearer_metadata("k-app"))
        ]
        assert events[-1].WhichOneof("event") == "finished"


async def test_oversized_input_is_refused_in_milliseconds_naming_the_limit(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker()
    async with running_router(registry.address, [worker.address]) as router:
        # Over the transport bound: refused before it is parsed.
        err = await refusal(router.stub, request(prompt="x" * (5 * 1024 * 1024)), "")
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Under it, but too many messages: decided on the count, in milliseconds.
        many = router_pb2.GenerateRequest(
            model="tiny",
            messages=[common_pb2.ChatMessage(role="bogus", content="") for _ in range(200_000)],
        )
        err = await refusal(router.stub, many, "")
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        violations = from_rpc_error(err).violations
        assert [v.field for v in violations] == ["messages"] and "4096" in violations[0].description
        # Many bad fields: a bounded report, not one violation each.
        bad_roles = router_pb2.GenerateRequest(
            model="tiny",
            messages=[common_pb2.ChatMessage(role="bogus", content="x") for _ in range(4000)],
        )
        err = await refusal(router.stub, bad_roles, "")
        assert len(from_rpc_error(err).violations) <= 20
        stops = request(sampling=common_pb2.SamplingParams(stop=["s" * 1000]))
        err = await refusal(router.stub, stops, "")
        assert "256 characters" in (err.details() or "")
        assert worker.fake.requests == []


async def test_a_full_router_refuses_at_once_with_a_retry_hint(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker(
        script=[started(), delta("a", 1), Pause(30), delta("never", 2), finished()]
    )
    async with running_router(
        registry.address,
        [worker.address],
        api_keys=KEYS,
        max_in_flight=2,
        max_in_flight_per_key=1,
    ) as router:
        holding = []
        for key in ("k-app", "k-ops"):  # one each: the per-key bound is 1, the router's 2
            call = router.stub.Generate(request(), timeout=30, metadata=bearer_metadata(key))
            async for event in call:
                if event.WhichOneof("event") == "delta":
                    break
            holding.append(call)

        # Full: refused without waiting, saying when to come back.
        err = await refusal(router.stub, request(), "k-app")
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        refused = from_rpc_error(err)
        assert refused.reason == "ROUTER_OVERLOADED" and refused.retry_after_s == 1.0

        holding.pop().cancel()  # k-ops's slot frees: the router has room, k-app still not
        await wait_until(worker.fake.cancelled.is_set)
        reasons = []
        for _ in range(100):  # the router frees the slot a moment after the worker sees it
            reasons.append(from_rpc_error(await refusal(router.stub, request(), "k-app")).reason)
            if reasons[-1] != "ROUTER_OVERLOADED":
                break
            await asyncio.sleep(0.02)
        assert reasons[-1] == "KEY_OVERLOADED", reasons
        holding.pop().cancel()


async def test_a_request_no_model_has_the_context_for_is_invalid_naming_the_context(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    """Regression (#11): it was FAILED_PRECONDITION "no candidate meets the request"."""
    worker = await start_worker()
    async with running_router(registry.address, [worker.address]) as router:
        long_prompt = request(prompt="word " * 4000)  # far more than tiny's 2048 tokens
        err = await refusal(router.stub, long_prompt, "")
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        [violation] = from_rpc_error(err).violations
        assert violation.field == "prompt" and "2048" in violation.description
        huge_output = request(sampling=common_pb2.SamplingParams(max_tokens=5000))
        err = await refusal(router.stub, huge_output, "")
        assert [v.field for v in from_rpc_error(err).violations] == ["sampling.max_tokens"]
        assert worker.fake.requests == []
        # Within the context it is served.
        served = [e async for e in router.stub.Generate(request(), timeout=10)]
        assert served[-1].WhichOneof("event") == "finished"


class _ClosedChannelStub:
    """A worker stub whose channel discovery closed after the worker was scheduled."""

    def __init__(self, real: object) -> None:
        self._real = real
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def Generate(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        raise grpc.aio.UsageError("Channel is closed.")


@pytest.mark.parametrize("closed_at", ["connect", "call"])
async def test_a_worker_channel_closed_under_a_request_is_unavailable_not_unknown(
    registry: RegistryUnderTest, start_worker: WorkerFactory, closed_at: str
) -> None:
    """Seen under chaos: UNKNOWN "Unexpected UsageError", then INTERNAL from the connect."""
    worker = await start_worker()
    async with running_router(registry.address, [worker.address]) as router:
        await wait_until(lambda: all(h.watching for h in router.pool.workers))
        [handle] = router.pool.workers
        closed = _ClosedChannelStub(handle.stub)
        if closed_at == "call":
            handle.stub = closed  # type: ignore[assignment]
        else:

            async def connect(timeout_s: float) -> None:
                closed.calls += 1
                raise grpc.aio.UsageError("Channel is closed.")

            handle.connect = connect  # type: ignore[method-assign]
        err = await refusal(router.stub, request(), "")
    assert closed.calls >= 1
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "left the pool" in (err.details() or "") and "Error" not in (err.details() or "")
