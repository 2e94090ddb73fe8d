"""WorkerService over a real in-process grpc.aio server, streaming the real SmolLM2."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from modelyard.bundled import smollm2_model
from modelyard.errors import from_rpc_error
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from tests.fixtures.tiny_gguf import gguf_model
from tests.worker_events import collect, content, next_content
from worker.catalogue import FileCatalogue
from worker.config import WorkerSettings
from worker.main import RunningWorker, start_worker

pytestmark = pytest.mark.asyncio(loop_scope="module")

PARIS = "The capital of France is"
COUNTING = "Count from 1 to 1000: 1, 2, 3, 4, 5,"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()


@pytest.fixture(scope="module")
def smollm2() -> model_pb2.Model:
    model = smollm2_model()
    model.pricing.input_usd_per_1k_tokens = 1.0
    model.pricing.output_usd_per_1k_tokens = 2.0
    return model


@pytest.fixture(scope="module")
def reference(smollm2_gguf: Path, settings: WorkerSettings) -> Any:
    """llama-cpp-python's own high-level API on the same file: the greedy ground truth."""
    from llama_cpp import Llama

    llama = Llama(
        str(smollm2_gguf), n_ctx=settings.context_length, n_threads=settings.threads, verbose=False
    )
    yield llama
    llama.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(
    spans: InMemorySpanExporter,
    settings: WorkerSettings,
    smollm2: model_pb2.Model,
    tiny_gguf: Path,
) -> AsyncIterator[RunningWorker]:
    catalogue = FileCatalogue(
        [
            smollm2,
            gguf_model(tiny_gguf, name="tiny-cold"),
            gguf_model(tiny_gguf, name="tiny-watch"),
        ]
    )
    running = await start_worker(settings, catalogue=catalogue)
    yield running
    await running.stop(grace_s=1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(
    worker: RunningWorker, smollm2: model_pb2.Model
) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        client = worker_pb2_grpc.WorkerServiceStub(channel)
        await client.LoadModel(worker_pb2.LoadModelRequest(model=smollm2), timeout=60)
        yield client


def generate_request(
    model: model_pb2.Model, prompt: str = PARIS, **sampling: Any
) -> worker_pb2.WorkerServiceGenerateRequest:
    sampling.setdefault("temperature", 0.0)
    return worker_pb2.WorkerServiceGenerateRequest(
        request_id="test",
        model=model,
        prompt=prompt,
        sampling=common_pb2.SamplingParams(**sampling),
    )


Streamed = tuple[
    common_pb2.GenerationStarted, list[common_pb2.TokenDelta], common_pb2.GenerationFinished
]


async def generate(
    stub: worker_pb2_grpc.WorkerServiceStub, request: worker_pb2.WorkerServiceGenerateRequest
) -> Streamed:
    events = await collect(stub.Generate(request, timeout=60))
    assert events[0].WhichOneof("event") == "started"
    assert events[-1].WhichOneof("event") == "finished"
    deltas = [e.delta for e in events[1:-1]]
    assert all(e.WhichOneof("event") == "delta" for e in events[1:-1])
    return events[0].started, deltas, events[-1].finished


def text_of(deltas: list[common_pb2.TokenDelta]) -> str:
    return "".join(d.text for d in deltas)


def streamed_ids(deltas: list[common_pb2.TokenDelta]) -> int:
    return sum(len(d.token_ids) for d in deltas)


async def status(stub: worker_pb2_grpc.WorkerServiceStub) -> worker_pb2.WorkerStatus:
    response: worker_pb2.GetStatusResponse = await stub.GetStatus(
        worker_pb2.GetStatusRequest(), timeout=5
    )
    return response.status


def reference_text(reference: Any, prompt: str, max_tokens: int) -> str:
    out = reference.create_completion(prompt, max_tokens=max_tokens, temperature=0)
    return str(out["choices"][0]["text"])


async def test_greedy_text_is_identical_to_llama_cpp_pythons_own(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model, reference: Any
) -> None:
    for prompt in (PARIS, "def fibonacci(n):"):
        _, deltas, finished = await generate(stub, generate_request(smollm2, prompt, max_tokens=48))
        assert text_of(deltas) == reference_text(reference, prompt, 48)
        assert finished.usage.output_tokens == streamed_ids(deltas)


async def test_tokens_stream_before_the_generation_ends(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model
) -> None:
    call = stub.Generate(generate_request(smollm2, max_tokens=64), timeout=60)
    started = await next_content(call)
    first = await next_content(call)
    assert started.WhichOneof("event") == "started"
    assert first.WhichOneof("event") == "delta" and len(first.delta.token_ids) == 1
    assert not call.done()  # the rest is still being decoded
    rest = []
    while (event := await call.read()) is not grpc.aio.EOF:
        rest.append(event)
    rest = content(rest)
    assert rest[-1].WhichOneof("event") == "finished"
    assert len(rest) > 10


async def test_the_started_event_says_who_serves_the_request(
    stub: worker_pb2_grpc.WorkerServiceStub, worker: RunningWorker, smollm2: model_pb2.Model
) -> None:
    request = generate_request(smollm2, max_tokens=2)
    request.route, request.arm, request.attempt = "chat", "control", 2
    started, _, _ = await generate(stub, request)
    assert started.worker_id == worker.identity.worker_id == f"worker-{worker.port}"
    assert (started.model, started.version) == (smollm2.name, smollm2.version)
    assert started.engine == common_pb2.ENGINE_LLAMA_CPP
    # Route, arm and attempt are the router's facts: the worker does not echo them back.
    assert (started.route, started.arm, started.attempt) == ("", "", 0)
    assert not started.cold_start
    assert started.request_id == "test"


async def test_max_tokens_ends_with_length_and_usage_counts_streamed_ids(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model
) -> None:
    _, deltas, finished = await generate(stub, generate_request(smollm2, max_tokens=16))
    assert finished.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert finished.usage.output_tokens == streamed_ids(deltas) == 16
    assert finished.usage.input_tokens == 5
    t = finished.timings
    assert 0 < t.ttft_ms <= t.total_ms
    assert t.decode_ms > 0 and t.decode_tokens_per_second > 0
    assert t.load_ms == 0
    assert finished.cost.input_usd == pytest.approx(5 / 1000 * 1.0)
    assert finished.cost.output_usd == pytest.approx(16 / 1000 * 2.0)
    assert finished.cost.total_usd == pytest.approx(finished.cost.input_usd + 0.032)


async def test_a_stop_sequence_ends_the_stream_before_it(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model, reference: Any
) -> None:
    full = reference_text(reference, PARIS, 30)
    assert "United" in full  # the greedy continuation this test relies on
    request = generate_request(smollm2, max_tokens=30, stop=["United", "never there"])
    _, deltas, finished = await generate(stub, request)
    assert finished.finish_reason == common_pb2.FINISH_REASON_STOP_SEQUENCE
    assert finished.stop_sequence == "United"
    assert text_of(deltas) == full[: full.index("United")]
    assert finished.usage.output_tokens == streamed_ids(deltas)


async def test_chat_is_identical_to_llama_cpp_pythons_chat_completion(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model, reference: Any
) -> None:
    question = "What is the capital of France?"
    request = worker_pb2.WorkerServiceGenerateRequest(
        model=smollm2,
        messages=[common_pb2.ChatMessage(role="user", content=question)],
        sampling=common_pb2.SamplingParams(temperature=0, max_tokens=40),
    )
    started, deltas, finished = await generate(stub, request)
    expected = reference.create_chat_completion(
        [{"role": "user", "content": question}], max_tokens=40, temperature=0
    )
    assert started.request_id  # generated when the caller sent none
    assert text_of(deltas) == expected["choices"][0]["message"]["content"]
    # The template's default system prompt and turn markers are part of the input.
    assert finished.usage.input_tokens == expected["usage"]["prompt_tokens"]


async def generated_total(stub: worker_pb2_grpc.WorkerServiceStub) -> int:
    return sum(m.generated_tokens_total for m in (await status(stub)).models)


async def until_idle(stub: worker_pb2_grpc.WorkerServiceStub, what: str) -> None:
    """Poll until no sequence runs; the deadline only keeps a broken worker from hanging."""
    deadline = time.monotonic() + 60
    while (await status(stub)).running_sequences:
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


LONG = 1500  # max_tokens no test waits for: a sequence that stops early was stopped


async def test_cancelling_the_call_stops_decoding(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model
) -> None:
    before = await generated_total(stub)
    call = stub.Generate(generate_request(smollm2, COUNTING, max_tokens=LONG), timeout=120)
    for _ in range(6):
        await call.read()
    assert (await status(stub)).running_sequences == 1
    call.cancel()

    await until_idle(stub, "decoding went on after the cancel")
    total = await generated_total(stub)
    assert total - before < LONG  # stopped by the cancel, not by max_tokens
    await asyncio.sleep(0.3)
    assert await generated_total(stub) == total  # and nothing decodes any more


async def test_the_deadline_is_enforced_while_decoding(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model
) -> None:
    before = await generated_total(stub)
    request = generate_request(smollm2, COUNTING, max_tokens=LONG)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Generate(request, timeout=0.5):
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await until_idle(stub, "decoding went on past the deadline")
    assert await generated_total(stub) - before < LONG  # the worker stopped it too


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        ({"top_p": 1.5}, "sampling.top_p"),
        ({"temperature": -1.0}, "sampling.temperature"),
        ({"max_tokens": -3}, "sampling.max_tokens"),
        ({"stop": [""]}, "sampling.stop"),
    ],
)
async def test_invalid_sampling_is_invalid_argument_naming_the_field(
    stub: worker_pb2_grpc.WorkerServiceStub,
    smollm2: model_pb2.Model,
    sampling: dict[str, Any],
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await generate(stub, generate_request(smollm2, **sampling))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in from_rpc_error(err.value).violations] == [field]


async def test_a_request_without_a_model_version_is_invalid(
    stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await generate(stub, generate_request(model_pb2.Model(name="smollm2")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in from_rpc_error(err.value).violations] == ["model"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.LoadModel(
            worker_pb2.LoadModelRequest(model=model_pb2.Model(name="smollm2")), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in from_rpc_error(err.value).violations] == ["model"]


async def test_a_cold_model_needs_load_if_cold(
    stub: worker_pb2_grpc.WorkerServiceStub, tiny_gguf: Path
) -> None:
    model = gguf_model(tiny_gguf, name="tiny-cold")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await generate(stub, generate_request(model, max_tokens=4))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "LoadModel" in (err.value.details() or "")

    request = generate_request(model, max_tokens=4)
    request.load_if_cold = True
    started, deltas, finished = await generate(stub, request)
    assert started.cold_start
    assert finished.timings.load_ms > 0
    assert finished.usage.output_tokens == streamed_ids(deltas)


async def test_watch_status_sends_at_once_on_changes_and_on_heartbeats(
    stub: worker_pb2_grpc.WorkerServiceStub, tiny_gguf: Path
) -> None:
    heartbeat = duration_pb2.Duration()
    heartbeat.FromMilliseconds(200)
    watch = stub.WatchStatus(worker_pb2.WatchStatusRequest(heartbeat_interval=heartbeat))
    first = (await watch.read()).status
    assert first.worker_id and first.engines == [common_pb2.ENGINE_LLAMA_CPP]

    model = gguf_model(tiny_gguf, name="tiny-watch")
    loaded = await stub.LoadModel(worker_pb2.LoadModelRequest(model=model, pin=True), timeout=10)
    assert loaded.loaded and loaded.model.state == worker_pb2.RESIDENCY_STATE_WARM
    assert loaded.model.pinned

    def state_of(s: worker_pb2.WorkerStatus) -> int:
        return next((m.state for m in s.models if m.name == "tiny-watch"), 0)

    seen = first
    while state_of(seen) != worker_pb2.RESIDENCY_STATE_WARM:
        seen = (await asyncio.wait_for(watch.read(), 2)).status
        assert seen.sequence > first.sequence

    # Nothing changes now: what comes are heartbeats, repeating the last version, each
    # built anew and at least the interval apart (by the worker's own clock: a loaded
    # machine can only make them later).
    beat = (await asyncio.wait_for(watch.read(), 10)).status
    assert beat.sequence == seen.sequence
    next_beat = (await asyncio.wait_for(watch.read(), 10)).status
    assert next_beat.sequence == seen.sequence
    gap_ns = next_beat.updated_at.ToNanoseconds() - beat.updated_at.ToNanoseconds()
    assert gap_ns >= 150_000_000

    unloaded = await stub.UnloadModel(
        worker_pb2.UnloadModelRequest(name="tiny-watch", version="1"), timeout=10
    )
    assert unloaded.cancelled_requests == 0
    while state_of(seen) != worker_pb2.RESIDENCY_STATE_COLD:
        seen = (await asyncio.wait_for(watch.read(), 2)).status
    watch.cancel()


async def test_load_model_is_idempotent(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model
) -> None:
    again = await stub.LoadModel(worker_pb2.LoadModelRequest(model=smollm2), timeout=10)
    assert not again.loaded and again.load_ms == 0
    assert again.model.state == worker_pb2.RESIDENCY_STATE_WARM
    assert again.model.memory_bytes > 0


async def test_generation_is_traced_as_queue_prefill_and_decode(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    _, _, finished = await generate(stub, generate_request(smollm2, max_tokens=4))
    by_name: dict[str, ReadableSpan] = {s.name: s for s in spans.get_finished_spans()}
    key = f"{smollm2.name}@{smollm2.version}"
    assert {"worker.queue", "engine.prefill", "engine.decode", f"text_completion {key}"} <= (
        by_name.keys()
    )
    generation = by_name[f"text_completion {key}"]
    assert by_name["engine.decode"].parent == generation.context
    assert (generation.attributes or {})["gen_ai.usage.output_tokens"] == 4
    decode = by_name["engine.decode"].attributes or {}
    assert decode["modelyard.engine"] == "llama.cpp"
    assert "gen_ai.system" not in decode
    assert decode["gen_ai.provider.name"] == "modelyard"
    assert decode["gen_ai.request.model"] == f"{smollm2.name}@{smollm2.version}"
    assert decode["gen_ai.usage.input_tokens"] == finished.usage.input_tokens
    assert decode["gen_ai.usage.output_tokens"] == 4
    assert tuple(decode["gen_ai.response.finish_reasons"]) == ("length",)  # type: ignore[arg-type]
