"""Continuous batching in the llama.cpp engine on the real SmolLM2: many sequences, one context."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from worker.counters import SequenceCounters
from worker.engines.base import (
    EngineEvent,
    EngineRequest,
    Finished,
    FinishReason,
    ModelSpec,
    Piece,
    SamplingConfig,
)
from worker.engines.llama_cpp import LlamaCppEngine

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "The three primary colors are",
    "Water boils at",
    "import numpy as np\n",
    "My favourite fruit is",
    "The largest planet is",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(smollm2_gguf: Path) -> AsyncIterator[LlamaCppEngine]:
    eng = LlamaCppEngine(SequenceCounters())
    spec = ModelSpec(
        "smollm2@1", smollm2_gguf, context_length=1024, threads=1, max_parallel_sequences=8
    )
    await eng.load(spec)
    yield eng
    await eng.unload()


async def run(engine: LlamaCppEngine, req: EngineRequest) -> list[EngineEvent]:
    return [event async for event in engine.generate(req)]


async def test_eight_concurrent_streams_all_complete_with_their_usage(
    engine: LlamaCppEngine,
) -> None:
    requests = [
        EngineRequest(f"r{i}", prompt=p, sampling=SamplingConfig(seed=i), max_tokens=16)
        for i, p in enumerate(PROMPTS)
    ]
    running_seen = 0

    async def watch() -> None:
        nonlocal running_seen
        while True:
            running_seen = max(running_seen, engine.stats().running_sequences)
            await asyncio.sleep(0.005)

    watcher = asyncio.ensure_future(watch())
    results = await asyncio.gather(*(run(engine, r) for r in requests))
    watcher.cancel()
    for events in results:
        finished = events[-1]
        assert isinstance(finished, Finished)
        assert finished.reason in (FinishReason.LENGTH, FinishReason.STOP)
        streamed = sum(len(e.token_ids) for e in events if isinstance(e, Piece))
        assert finished.output_tokens == streamed > 0
        if finished.reason is FinishReason.LENGTH:
            assert streamed == 16
    assert running_seen > 1  # they really ran side by side
    assert engine.stats().running_sequences == 0


async def test_cancelling_one_stream_leaves_the_others_running(engine: LlamaCppEngine) -> None:
    greedy = SamplingConfig(temperature=0)
    keep = [
        EngineRequest(f"k{i}", prompt=p, sampling=greedy, max_tokens=24)
        for i, p in enumerate(PROMPTS[:3])
    ]
    doomed = engine.generate(EngineRequest("doomed", prompt=PROMPTS[4], max_tokens=10_000))
    others = [asyncio.ensure_future(run(engine, r)) for r in keep]
    await anext(doomed)
    await anext(doomed)
    await doomed.aclose()
    for events in await asyncio.gather(*others):
        finished = events[-1]
        assert isinstance(finished, Finished) and finished.reason is not FinishReason.CANCELLED
        assert finished.output_tokens == sum(
            len(e.token_ids) for e in events if isinstance(e, Piece)
        )


async def test_a_solo_greedy_sequence_is_the_same_with_or_without_neighbours(
    engine: LlamaCppEngine,
) -> None:
    # Prefixes only: near-tie logits may flip a later token on a quantized model.
    req = EngineRequest(
        "solo", prompt=PROMPTS[0], sampling=SamplingConfig(temperature=0), max_tokens=6
    )
    solo = [t for e in await run(engine, req) if isinstance(e, Piece) for t in e.token_ids]
    assert len(solo) == 6 and engine.stats().running_sequences == 0

    # Neighbours decoding the whole time: each batch holds their rows beside this one's.
    # 200 tokens each: long enough to outlast it, and their KV reservations (prompt +
    # max_tokens cells) leave it room in the 1024-cell context, so it is not queued.
    neighbours = [
        engine.generate(
            EngineRequest(f"n{i}", prompt=p, sampling=SamplingConfig(seed=i), max_tokens=200)
        )
        for i, p in enumerate(PROMPTS[1:3])
    ]
    try:
        for stream in neighbours:
            while not isinstance(await anext(stream), Piece):  # until it is decoding
                pass
        batched: list[int] = []
        running_beside: list[int] = []
        async for event in engine.generate(req):
            if isinstance(event, Piece):
                batched.extend(event.token_ids)
                running_beside.append(engine.stats().running_sequences)
        # Each token but the last (its sequence may be counted out before the loop reads
        # it) was decoded beside a neighbour at least.
        assert len(running_beside) == 6 and min(running_beside[:-1]) >= 2
    finally:
        for stream in neighbours:
            await stream.aclose()
    assert batched == solo
