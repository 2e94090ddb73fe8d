"""The llama.cpp batch loop prefills the prompt with the fewest tokens left first: a short
prompt admitted while a long one is being read gets its first token before the long one
(a chat's next turn, mostly cached, does not wait out another session's cold history).

The tiny random model with 16-token batches and a pause after each step, so a 320-token
prompt takes many steps; only the order of first outputs is asserted (random weights)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from worker.counters import SequenceCounters
from worker.engines.base import (
    EngineEvent,
    EngineRequest,
    Finished,
    ModelSpec,
    Piece,
    SamplingConfig,
    Scheduled,
)
from worker.engines.llama_cpp import LlamaCppEngine

STEP_PAUSE_S = 0.05
LONG = "a b " * 160  # ~320 tokens: ~20 steps of 16
SHORT = "hi"


async def test_a_short_prompt_admitted_during_a_long_prefill_answers_first(
    tiny_gguf: Path,
) -> None:
    engine = LlamaCppEngine(SequenceCounters())
    await engine.load(
        ModelSpec(
            "tiny@1",
            tiny_gguf,
            context_length=512,
            threads=1,
            batch_size=16,
            max_parallel_sequences=2,
            token_delay_s=STEP_PAUSE_S,
        )
    )
    order: list[str] = []
    long_reading = asyncio.Event()

    async def read(name: str, prompt: str) -> None:
        req = EngineRequest(name, prompt=prompt, sampling=SamplingConfig(seed=1), max_tokens=2)
        seen = False
        event: EngineEvent
        async for event in engine.generate(req):
            if isinstance(event, Scheduled):
                long_reading.set()
            elif isinstance(event, Piece | Finished) and not seen:
                seen = True  # the first output (a token, or the end for an EOS)
                order.append(name)

    try:
        async with asyncio.timeout(60):
            long_task = asyncio.create_task(read("long", LONG))
            await long_reading.wait()
            await asyncio.sleep(3 * STEP_PAUSE_S)  # the long prompt is a few steps in
            await read("short", SHORT)
            await long_task
    finally:
        await engine.unload()
    assert order == ["short", "long"]
