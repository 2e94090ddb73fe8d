"""Every llama.cpp computation of a worker runs on its one compute thread.

A thread per model gave libgomp a thread team per model, and more team threads than
CPUs make its barriers sleep: a second model loaded and idle cut the first one's
decode to a fraction (worker/engines/llama_compute.py). So the mechanism is checked
here: every llama_decode of two generating models and an embedding model, called on
one thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_lib
import pytest

from worker.counters import SequenceCounters
from worker.engines.base import (
    EmbedRequest,
    EngineRequest,
    Finished,
    FinishReason,
    ModelSpec,
    SamplingConfig,
)
from worker.engines.llama_compute import COMPUTE, ComputeThread
from worker.engines.llama_cpp import LlamaCppEngine


@pytest.fixture
def decode_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[int]]:
    """The ids of the threads llama_decode is called on (the engines call it through the
    package, llama-cpp-python's Llama through its low-level module)."""
    seen: set[int] = set()
    real = llama_lib.llama_decode

    def recording(ctx: Any, batch: Any) -> int:
        seen.add(threading.get_ident())
        return int(real(ctx, batch))

    monkeypatch.setattr(llama_cpp, "llama_decode", recording)
    monkeypatch.setattr(llama_lib, "llama_decode", recording)
    yield seen


async def finish_of(engine: LlamaCppEngine, request_id: str) -> Finished:
    req = EngineRequest(request_id, prompt="hello", sampling=SamplingConfig(seed=3), max_tokens=24)
    events = [event async for event in engine.generate(req)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    return finished


async def test_every_model_and_embedding_decodes_on_the_one_compute_thread(
    tiny_gguf: Path, decode_threads: set[int]
) -> None:
    first, second, embedder = (LlamaCppEngine(SequenceCounters()) for _ in range(3))
    await first.load(ModelSpec("a@1", tiny_gguf, context_length=256, threads=1))
    await second.load(ModelSpec("b@1", tiny_gguf, context_length=256, threads=1))
    await embedder.load(ModelSpec("e@1", tiny_gguf, 256, 1, embedding=True))
    try:
        finishes = await asyncio.gather(
            *(finish_of(engine, f"r{i}") for i in range(3) for engine in (first, second))
        )
        embedded = await embedder.embed(EmbedRequest(["one", "two"]))
    finally:
        for engine in (first, second, embedder):
            await engine.unload()

    assert all(f.output_tokens > 0 for f in finishes)
    assert len(embedded.vectors) == 2
    assert decode_threads == {COMPUTE.ident}


async def test_unloading_one_model_leaves_the_others_decoding(tiny_gguf: Path) -> None:
    staying, leaving = LlamaCppEngine(SequenceCounters()), LlamaCppEngine(SequenceCounters())
    await staying.load(ModelSpec("a@1", tiny_gguf, context_length=256, threads=1))
    await leaving.load(ModelSpec("b@1", tiny_gguf, context_length=256, threads=1))
    try:
        running = asyncio.ensure_future(finish_of(staying, "stays"))
        await leaving.unload()
        finished = await asyncio.wait_for(running, 30)
        after = await asyncio.wait_for(finish_of(staying, "after"), 30)
    finally:
        await staying.unload()

    assert finished.reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert after.output_tokens > 0


async def test_a_call_hands_back_its_result_or_its_exception() -> None:
    compute = ComputeThread()
    assert await asyncio.wrap_future(compute.call(lambda: 6 * 7)) == 42
    with pytest.raises(ZeroDivisionError):
        await asyncio.wrap_future(compute.call(lambda: 1 / 0))
    assert await asyncio.wrap_future(compute.call(threading.get_ident)) == compute.ident
