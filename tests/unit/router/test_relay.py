"""Generate through a real router server, against scripted WorkerService doubles."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from modelyard.errors import DeadlineExceeded, from_rpc_error
from modelyard.v1 import common_pb2, router_pb2, router_pb2_grpc, worker_pb2
from router.relay import request_id_of
from router.service import USAGE_METADATA_KEY
from tests.stream_shape import shape, token_ids
from tests.unit.router.doubles import (
    LOOP_SCOPE,
    Fail,
    Pause,
    RegistryUnderTest,
    WorkerFactory,
    delta,
    finished,
    free_address,
    make_model,
    running_router,
    started,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)


def request(
    model: str = "tiny",
    request_id: str = "",
    sampling: common_pb2.SamplingParams | None = None,
    prompt: str = "Hello",
) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model=model,
        prompt=prompt,
        sampling=sampling or common_pb2.SamplingParams(max_tokens=8),
        request_id=request_id,
    )


async def collect(
    stub: router_pb2_grpc.RouterServiceAsyncStub,
    req: router_pb2.GenerateRequest,
    deadline_s: float = 10.0,
) -> list[router_pb2.GenerateResponse]:
    return [event async for event in stub.Generate(req, timeout=deadline_s)]


def kinds(events: list[router_pb2.GenerateResponse]) -> list[str | None]:
    return [e.WhichOneof("event") for e in events]


def text(events: list[router_pb2.GenerateResponse]) -> str:
    return "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")


async def test_relays_started_deltas_finished_in_order(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker("w1")
    async with running_router(registry.address, [worker.address]) as router:
        events = await collect(router.stub, request(request_id="req-1"))

    assert shape(events) == ["started", "delta", "finished"]
    first = events[0].started
    assert (first.request_id, first.model, first.version) == ("req-1", "tiny", "1")
    assert (first.worker_id, first.attempt) == ("w1", 1)
    assert text(events) == "Hello"
    assert token_ids(events) == [1, 2]
    done = events[-1].finished
    assert done.usage.output_tokens == 2 and done.timings.ttft_ms == 12.5
    assert done.timings.route_ms > 0
    (sent,) = worker.fake.requests
    assert sent.load_if_cold and sent.attempt == 1
    assert sent.model.artifact.uri == "file:///models/tiny-1.gguf"
    assert sent.prompt == "Hello" and sent.sampling.max_tokens == 8


async def test_request_id_rules() -> None:
    assert request_id_of("mine") == "mine"
    assigned = request_id_of("")
    assert len(assigned) == 32 and int(assigned, 16) >= 0
    assert request_id_of("") != assigned
    assert request_id_of("x" * 128) == "x" * 128


async def test_too_long_request_id_is_invalid_argument(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker()
    async with running_router(registry.address, [worker.address]) as router:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(router.stub, request(request_id="x" * 129))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in (caught.value.details() or "")
    assert worker.fake.requests == []


async def test_complete_returns_the_whole_generation(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker("w1")
    async with running_router(registry.address, [worker.address]) as router:
        reply = await router.stub.Complete(
            router_pb2.CompleteRequest(model="tiny@2", prompt="Hi"), timeout=10
        )

    assert reply.text == "Hello" and list(reply.token_ids) == [1, 2]
    assert reply.started.version == "2" and reply.started.request_id
    assert reply.finished.finish_reason == common_pb2.FINISH_REASON_STOP


async def test_deadline_reaches_the_worker(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker()
    async with running_router(registry.address, [worker.address]) as router:
        await collect(router.stub, request(), deadline_s=4.0)

    (remaining,) = worker.fake.time_remaining
    # gRPC C-core may round a timeout up when it encodes the grpc-timeout header
    # ("encoding may round up arbitrarily", timeout_encoding.h): seen 4.009 s here.
    assert remaining is not None and 2.0 < remaining <= 4.0 * 1.05


async def test_client_cancel_cancels_the_worker_call(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker(
        script=[started(), delta("a", 1), Pause(30), delta("never", 2), finished()]
    )
    async with running_router(registry.address, [worker.address]) as router:
        call = router.stub.Generate(request(), timeout=20)
        async for event in call:
            if event.WhichOneof("event") == "delta":
                break
        call.cancel()
        await asyncio.wait_for(worker.fake.cancelled.wait(), timeout=1.0)


async def test_worker_down_is_unavailable_naming_it_without_hanging(
    registry: RegistryUnderTest,
) -> None:
    dead = free_address()
    async with running_router(registry.address, [dead]) as router:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            # A router that hung would hit this deadline: DEADLINE_EXCEEDED, not UNAVAILABLE.
            await collect(router.stub, request(), deadline_s=10.0)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dead in (caught.value.details() or "")


# What gRPC itself says of a call whose connection died: addresses and socket errors.
TRANSPORT_TEXT = "Socket closed; last error: ipv4:10.9.8.7:50051: Connection reset by peer"


async def test_grpcs_own_failure_text_stays_in_the_log_and_the_client_reads_the_worker(
    registry: RegistryUnderTest, start_worker: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A status without modelyard's rich details is gRPC's own (the worker's refusals carry
    # them): before the first token and after it, the client gets the worker and the code.
    early = await start_worker("w-early", [Fail(grpc.StatusCode.UNAVAILABLE, TRANSPORT_TEXT)])
    late = await start_worker(
        "w-late", [started(), delta("Hel", 1), Fail(grpc.StatusCode.UNAVAILABLE, TRANSPORT_TEXT)]
    )
    errors: list[grpc.aio.AioRpcError] = []
    for worker in (early, late):
        async with running_router(registry.address, [worker.address]) as router:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await collect(router.stub, request())
            errors.append(caught.value)

    before, after = (e.details() or "" for e in errors)
    assert f"{early.address} (UNAVAILABLE: unreachable)" in before
    assert "w-late" in after and "UNAVAILABLE: unreachable" in after
    assert all("10.9.8.7" not in d and "reset" not in d for d in (before, after))
    assert caplog.text.count(TRANSPORT_TEXT) == 2  # the operator still sees it


@pytest.mark.parametrize(
    "code, details",
    [
        (grpc.StatusCode.UNAVAILABLE, "oom"),
        # A worker's gRPC server that begins to stop cancels the calls it had not yet
        # handed to the worker (seen in bench.scale_mesh's churn): never served, so safe.
        (grpc.StatusCode.CANCELLED, "CANCELLED"),
    ],
)
async def test_a_worker_that_did_not_serve_the_request_falls_through_to_the_next(
    registry: RegistryUnderTest,
    start_worker: WorkerFactory,
    code: grpc.StatusCode,
    details: str,
) -> None:
    broken = await start_worker("w-broken", [started(), Fail(code, details)])
    healthy = await start_worker("w-ok")
    async with running_router(registry.address, [broken.address, healthy.address]) as router:
        # Wait for both watches so the order is the configured one (round-robin aside).
        await wait_until(lambda: all(h.watching for h in router.pool.workers))
        # Distinct prompts: a repeated one would rightly follow its prefix to w-ok.
        results = [await collect(router.stub, request(prompt=f"Hello {i}")) for i in range(2)]

    for events in results:
        assert shape(events) == ["started", "delta", "finished"]
        assert events[0].started.worker_id == "w-ok"
        assert text(events) == "Hello"
    # One of the two requests tried the broken worker first and reports attempt 2.
    assert sorted(e[0].started.attempt for e in results) == [1, 2]
    assert len(broken.fake.requests) == 1 and broken.fake.requests[0].attempt == 1


async def test_failure_after_the_first_token_ends_unavailable_without_retrying(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    dying = await start_worker(
        "w-dying", [started(), delta("Hel", 1, 2), Fail(grpc.StatusCode.INTERNAL, "engine died")]
    )
    spare = await start_worker("w-spare")
    async with running_router(registry.address, [dying.address]) as router:
        received: list[router_pb2.GenerateResponse] = []
        call = router.stub.Generate(request(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for event in call:
                received.append(event)
        trailing = await call.trailing_metadata()

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "w-dying" in (caught.value.details() or "")
    assert kinds(received) == ["started", "delta"] and text(received) == "Hel"
    usage = common_pb2.Usage.FromString(dict(trailing)[USAGE_METADATA_KEY])
    assert usage.output_tokens == 2
    assert spare.fake.requests == []


async def test_no_retry_after_first_token_even_with_another_worker(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    dying = await start_worker(
        "w-dying", [started(), delta("Hel", 1), Fail(grpc.StatusCode.UNAVAILABLE, "gone")]
    )
    spare = await start_worker("w-spare")
    async with running_router(registry.address, [dying.address, spare.address]) as router:
        spare_handle = router.pool.workers[1]
        await wait_until(lambda: all(h.watching for h in router.pool.workers))
        spare_handle.watching = False  # make the dying worker the first choice
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(router.stub, request())

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert spare.fake.requests == []


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ],
)
async def test_worker_refusals_pass_through_with_their_message(
    registry: RegistryUnderTest, start_worker: WorkerFactory, code: grpc.StatusCode
) -> None:
    worker = await start_worker("w1", [Fail(code, "queue for tiny@1 is full (64 requests)")])
    spare = await start_worker("w2")
    async with running_router(registry.address, [worker.address, spare.address]) as router:
        spare_handle = router.pool.workers[1]
        await wait_until(lambda: all(h.watching for h in router.pool.workers))
        spare_handle.watching = False
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(router.stub, request())

    assert caught.value.code() == code
    assert caught.value.details() == "queue for tiny@1 is full (64 requests)"
    assert spare.fake.requests == []


async def test_unknown_model_is_not_found(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker()
    async with running_router(registry.address, [worker.address]) as router:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(router.stub, request(model="nope"))

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (caught.value.details() or "")
    assert worker.fake.requests == []


async def test_negative_temperature_is_invalid_argument_before_any_call(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker()
    async with running_router(registry.address, [worker.address]) as router:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(router.stub, request(sampling=common_pb2.SamplingParams(temperature=-1)))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.temperature" in (caught.value.details() or "")
    assert [v.field for v in from_rpc_error(caught.value).violations] == ["sampling.temperature"]
    assert registry.fake.get_calls == 0 and worker.fake.requests == []


async def test_warm_worker_is_preferred(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    cold = await start_worker("w-cold")
    warm = await start_worker("w-warm")
    warm.fake.set_models(
        worker_pb2.ModelStatus(name="tiny", version="1", state=worker_pb2.RESIDENCY_STATE_WARM)
    )
    async with running_router(registry.address, [cold.address, warm.address]) as router:
        await wait_until(lambda: router.pool.warm_workers(make_model("tiny", "1")) == ["w-warm"])
        served_by = [(await collect(router.stub, request()))[0].started.worker_id for _ in range(3)]

    assert served_by == ["w-warm"] * 3
    assert cold.fake.requests == []


async def test_list_models_and_workers(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker("w1")
    worker.fake.set_models(
        worker_pb2.ModelStatus(name="tiny", version="2", state=worker_pb2.RESIDENCY_STATE_WARM)
    )
    async with running_router(registry.address, [worker.address]) as router:
        await wait_until(lambda: router.pool.workers[0].watching)
        models = await router.stub.ListModels(router_pb2.RouterServiceListModelsRequest())
        workers = await router.stub.ListWorkers(router_pb2.ListWorkersRequest())

    warm = {f"{s.model.name}@{s.model.version}": list(s.warm_workers) for s in models.models}
    assert warm == {"tiny@1": [], "tiny@2": ["w1"]}
    assert models.catalog_revision == registry.fake.revision
    (info,) = workers.workers
    assert (info.worker_id, info.address, info.healthy) == ("w1", worker.address, True)


async def test_no_workers_is_unavailable_saying_how_to_add_one(
    registry: RegistryUnderTest,
) -> None:
    async with running_router(registry.address, []) as router:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(router.stub, request())

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "--worker" in (caught.value.details() or "")


async def test_silent_worker_is_unavailable_after_the_connect_timeout(
    registry: RegistryUnderTest,
) -> None:
    # Accepts TCP but never speaks HTTP/2: the channel would sit in CONNECTING for 20 s.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        async with running_router(registry.address, [address], connect_timeout_s=0.5) as router:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                # Without the connect timeout the router would wait out this deadline.
                await collect(router.stub, request(), deadline_s=10.0)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"{address} (not reachable within 0.5s)" in (caught.value.details() or "")


async def test_client_deadline_shorter_than_connect_timeout_is_deadline_exceeded(
    registry: RegistryUnderTest,
) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        async with running_router(registry.address, [address], connect_timeout_s=5) as router:
            # In process, so the only deadline is the one the relay is given: a relay that
            # ignored it would wait out the 5 s connect and answer UNAVAILABLE instead.
            events = router.parts.relay.generate(request(), timeout_s=0.5)
            with pytest.raises(DeadlineExceeded, match="deadline passed while routing tiny@1"):
                async with asyncio.timeout(30):
                    await anext(events)
            await events.aclose()


async def test_route_span_joins_the_worker_trace(
    registry: RegistryUnderTest, start_worker: WorkerFactory, spans: InMemorySpanExporter
) -> None:
    worker = await start_worker("w1")
    async with running_router(registry.address, [worker.address]) as router:
        await collect(router.stub, request(request_id="traced"))

    finished_spans = spans.get_finished_spans()
    # GenAI conventions: "{gen_ai.operation.name} {gen_ai.request.model}".
    (route,) = [s for s in finished_spans if s.name == "text_completion tiny"]
    attributes = dict(route.attributes or {})
    assert attributes["gen_ai.request.model"] == "tiny"
    assert attributes["gen_ai.operation.name"] == "text_completion"
    assert attributes["gen_ai.provider.name"] == "modelyard"
    assert attributes["gen_ai.response.model"] == "tiny@1"
    assert attributes["gen_ai.response.id"] == "traced"
    assert attributes["modelyard.model"] == "tiny@1"
    assert attributes["modelyard.worker"] == "w1"
    assert attributes["modelyard.request_id"] == "traced"
    route_context = route.get_span_context()
    assert route_context is not None
    worker_side = [
        s
        for s in finished_spans
        if s.name.endswith("WorkerService/Generate")
        and s.kind == trace.SpanKind.SERVER
        and s.context is not None
        and s.context.trace_id == route_context.trace_id
    ]
    assert worker_side, "the worker's server span is not in the router's trace"


async def test_a_generation_that_finishes_before_any_token_is_relayed(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    # A model may emit end-of-sequence first: started then finished, no deltas.
    worker = await start_worker("w1", script=[started(), finished()])
    async with running_router(registry.address, [worker.address]) as router:
        events = await collect(router.stub, request())

    assert kinds(events) == ["started", "finished"]
    assert events[-1].finished.finish_reason == common_pb2.FINISH_REASON_STOP


async def test_a_full_worker_sends_the_request_to_the_next_one(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    full = await start_worker("w1", [Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")])
    spare = await start_worker("w2")
    # The full worker has the model warm, so every profile tries it first.
    full.fake.set_models(
        worker_pb2.ModelStatus(name="tiny", version="1", state=worker_pb2.RESIDENCY_STATE_WARM)
    )
    async with running_router(registry.address, [full.address, spare.address]) as router:
        await wait_until(lambda: all(h.watching for h in router.pool.workers))
        await wait_until(lambda: router.pool.warm_workers(make_model("tiny", "1")) == ["w1"])
        events = await collect(router.stub, request())

    assert kinds(events)[0] == "started" and kinds(events)[-1] == "finished"
    assert (len(full.fake.requests), len(spare.fake.requests)) == (1, 1)
    assert (events[0].started.worker_id, events[0].started.attempt) == ("w2", 2)
    assert spare.fake.requests[0].attempt == 2


async def test_every_worker_full_is_resource_exhausted(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    workers = [
        await start_worker(name, [Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")])
        for name in ("w1", "w2")
    ]
    async with running_router(registry.address, [w.address for w in workers]) as router:
        await wait_until(lambda: all(h.watching for h in router.pool.workers))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(router.stub, request())

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at capacity" in (caught.value.details() or "")


async def test_a_router_without_workers_refuses_and_counts_the_request(
    registry: RegistryUnderTest,
) -> None:
    # With every pool scaled to zero, the failed requests are what wakes a pool.
    async with running_router(registry.address, []) as router:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(router.stub, request())
        counted = router.parts.metrics.registry.get_sample_value(
            "modelyard_router_requests_total", {"model": "tiny@1", "arm": "", "code": "UNAVAILABLE"}
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert from_rpc_error(caught.value).reason == "NO_WORKERS"
    assert counted == 1


async def test_the_output_ceiling_reaches_the_worker_per_api_key(
    registry: RegistryUnderTest, start_worker: WorkerFactory
) -> None:
    worker = await start_worker("w1")
    async with running_router(
        registry.address,
        [worker.address],
        api_keys=["alice:k-alice", "batch:k-batch"],
        max_output_tokens_ceiling=300,
        key_max_output_tokens_ceilings={"batch": 40},
    ) as router:
        unset = request(sampling=common_pb2.SamplingParams())
        for key in ("k-alice", "k-batch"):
            auth = (("authorization", f"Bearer {key}"),)
            events = [e async for e in router.stub.Generate(unset, timeout=10, metadata=auth)]
            assert kinds(events)[-1] == "finished"

    alice, batch = worker.fake.requests
    assert alice.sampling.max_tokens == batch.sampling.max_tokens == 0  # left to the worker
    assert (alice.max_output_tokens_ceiling, batch.max_output_tokens_ceiling) == (300, 40)
