"""The llama.cpp engine on the tiny random GGUF: stream shape, seeds, limits, aborts.

The tiny model emits random bytes and EOS anywhere, so these tests check
invariants, never exact text or token counts (test_worker_service has the real model).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelyard.errors import InvalidArgument
from worker.counters import SequenceCounters
from worker.engines.base import (
    ChatTurn,
    EngineEvent,
    EngineRequest,
    Finished,
    FinishReason,
    ModelSpec,
    Piece,
    SamplingConfig,
    Scheduled,
)
from worker.engines.common import EngineNotLoaded
from worker.engines.llama_cpp import LlamaCppEngine


@pytest.fixture
async def engine(tiny_gguf: Path) -> AsyncIterator[LlamaCppEngine]:
    eng = LlamaCppEngine(SequenceCounters())
    await eng.load(ModelSpec("tiny@1", tiny_gguf, context_length=256, threads=1))
    yield eng
    await eng.unload()


async def collect(stream: AsyncIterator[EngineEvent]) -> list[EngineEvent]:
    return [event async for event in stream]


def token_ids(events: list[EngineEvent]) -> list[int]:
    return [t for e in events if isinstance(e, Piece) for t in e.token_ids]


async def wait_until_idle(eng: LlamaCppEngine, within_s: float = 1.0) -> float:
    started = time.monotonic()
    while eng.stats().running_sequences:
        assert time.monotonic() - started < within_s, "the decode loop did not stop"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_a_stream_is_scheduled_then_pieces_then_one_finish(engine: LlamaCppEngine) -> None:
    req = EngineRequest("r1", prompt="hello", sampling=SamplingConfig(seed=7), max_tokens=40)
    events = await collect(engine.generate(req))

    assert isinstance(events[0], Scheduled)
    assert all(isinstance(e, Piece) for e in events[1:-1])
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert finished.output_tokens == len(token_ids(events))
    assert finished.input_tokens == events[0].input_tokens > 0
    if finished.reason is FinishReason.LENGTH:
        assert finished.output_tokens == 40
    stats = engine.stats()
    assert stats.running_sequences == 0
    assert stats.queued_requests == 0
    assert stats.generated_tokens_total == finished.output_tokens


async def test_the_same_seed_gives_the_same_tokens(engine: LlamaCppEngine) -> None:
    def req(prompt: str, seed: int) -> EngineRequest:
        return EngineRequest("r", prompt=prompt, sampling=SamplingConfig(seed=seed), max_tokens=30)

    first = token_ids(await collect(engine.generate(req("hello", 3))))
    await collect(engine.generate(req("something else", 4)))  # disturbs the cached prefix
    again = token_ids(await collect(engine.generate(req("hello", 3))))
    assert first == again


async def test_chat_messages_use_the_template_from_the_gguf(engine: LlamaCppEngine) -> None:
    plain = EngineRequest("r", prompt="hi", max_tokens=1)
    chat = EngineRequest("r", messages=[ChatTurn("user", "hi")], max_tokens=1)
    plain_events = await collect(engine.generate(plain))
    chat_events = await collect(engine.generate(chat))
    # "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" is far longer than "hi".
    assert isinstance(plain_events[0], Scheduled) and isinstance(chat_events[0], Scheduled)
    assert chat_events[0].input_tokens > plain_events[0].input_tokens + 10


async def test_a_full_context_window_ends_with_context_length(engine: LlamaCppEngine) -> None:
    prompt = [5] * 250  # 6 tokens of room in the 256-token window
    req = EngineRequest(
        "r", prompt_token_ids=prompt, sampling=SamplingConfig(temperature=0), max_tokens=100
    )
    events = await collect(engine.generate(req))
    finished = events[-1]
    assert isinstance(finished, Finished)
    if finished.reason is not FinishReason.STOP:  # a random model may say EOS first
        assert finished.reason is FinishReason.CONTEXT_LENGTH
        assert finished.output_tokens == 6


async def test_a_prompt_longer_than_the_window_is_invalid(engine: LlamaCppEngine) -> None:
    req = EngineRequest("r", prompt_token_ids=[5] * 300)
    with pytest.raises(InvalidArgument) as err:
        await collect(engine.generate(req))
    assert err.value.violations[0].field == "prompt"
    assert "256" in err.value.message


async def test_closing_the_stream_stops_decoding(engine: LlamaCppEngine) -> None:
    req = EngineRequest("r", prompt_token_ids=[5] * 8, max_tokens=100_000)
    stream = engine.generate(req)
    assert isinstance(await anext(stream), Scheduled)
    await anext(stream)
    await stream.aclose()
    await wait_until_idle(engine)
    total = engine.stats().generated_tokens_total
    await asyncio.sleep(0.1)
    assert engine.stats().generated_tokens_total == total


async def test_abort_ends_the_stream_as_cancelled(engine: LlamaCppEngine) -> None:
    req = EngineRequest("abort-me", prompt_token_ids=[5] * 8, max_tokens=100_000)
    events: list[EngineEvent] = []
    async for event in engine.generate(req):
        events.append(event)
        if isinstance(event, Piece):
            engine.abort("abort-me")
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.reason in (FinishReason.CANCELLED, FinishReason.STOP)
    assert engine.stats().running_sequences == 0


async def test_unload_cancels_running_and_queued_requests(tiny_gguf: Path) -> None:
    counters = SequenceCounters()
    eng = LlamaCppEngine(counters)
    await eng.load(ModelSpec("tiny@1", tiny_gguf, context_length=256, threads=1))
    streams = [
        eng.generate(EngineRequest(f"r{i}", prompt_token_ids=[5] * 8, max_tokens=100_000))
        for i in range(3)
    ]
    first = await anext(streams[0])  # the first is decoding, the others wait their turn
    assert isinstance(first, Scheduled)
    pending = [asyncio.ensure_future(collect(s)) for s in streams[1:]]
    await asyncio.sleep(0)
    await eng.unload()
    rest = await collect(streams[0])
    assert isinstance(rest[-1], Finished) and rest[-1].reason in (
        FinishReason.CANCELLED,
        FinishReason.STOP,
    )
    for events in await asyncio.gather(*pending):
        assert isinstance(events[-1], Finished)
    snap = counters.snapshot()
    assert (snap.running_sequences, snap.queued_requests, snap.queued_tokens) == (0, 0, 0)
    with pytest.raises(EngineNotLoaded):
        await collect(eng.generate(EngineRequest("late", prompt="hi")))
