"""llama.cpp requests without max_tokens (EngineRequest.expected_tokens set): they reserve
their expected output, grow as they go, and share the context's cells without overrunning.

On the tiny random GGUF with a 256-cell context, its special tokens (EOS among them)
banned, so every sequence runs until the cells or the context end it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fixtures.tiny_gguf import SPECIAL_TOKENS
from worker.counters import SequenceCounters
from worker.engines.base import (
    EngineEvent,
    EngineRequest,
    Finished,
    FinishReason,
    ModelSpec,
    SamplingConfig,
    Scheduled,
)
from worker.engines.llama_cpp import LlamaCppEngine

N_CTX = 256
PROMPT = [5] * 8
NO_SPECIALS = {token: -100.0 for token in range(len(SPECIAL_TOKENS))}


@pytest.fixture
async def engine(tiny_gguf: Path) -> AsyncIterator[LlamaCppEngine]:
    eng = LlamaCppEngine(SequenceCounters())
    await eng.load(ModelSpec("tiny@1", tiny_gguf, context_length=N_CTX, threads=1))
    yield eng
    await eng.unload()


def unbounded(request_id: str, expected: int = 16) -> EngineRequest:
    """As the worker plans a request without max_tokens: bound at the context."""
    return EngineRequest(
        request_id,
        prompt_token_ids=PROMPT,
        sampling=SamplingConfig(temperature=0),
        max_tokens=N_CTX,
        expected_tokens=expected,
        logit_bias=NO_SPECIALS,
    )


async def finish_of(stream: AsyncIterator[EngineEvent]) -> Finished:
    events = [event async for event in stream]
    assert isinstance(events[-1], Finished)
    return events[-1]


async def test_it_grows_past_its_expected_length_to_the_end_of_the_context(
    engine: LlamaCppEngine,
) -> None:
    done = await finish_of(engine.generate(unbounded("alone")))
    assert (done.reason, done.output_tokens) == (FinishReason.CONTEXT_LENGTH, N_CTX - len(PROMPT))


async def test_sequences_that_outgrow_the_shared_cells_end_one_at_a_time(
    engine: LlamaCppEngine,
) -> None:
    # Both fit at first (8 + 16 cells each) and grow until the 256 cells are all taken:
    # then the one holding more ends, and the other runs on into the freed cells. Had
    # they overrun the cells, llama_decode would fail (INTERNAL), not finish.
    first, second = await asyncio.gather(
        finish_of(engine.generate(unbounded("a"))), finish_of(engine.generate(unbounded("b")))
    )
    reasons = {first.reason, second.reason}
    assert reasons == {FinishReason.CONTEXT_LENGTH}
    shorter, longer = sorted((first.output_tokens, second.output_tokens))
    assert shorter < N_CTX - 2 * len(PROMPT) and longer == N_CTX - len(PROMPT)
    snap = engine.stats()
    assert (snap.running_sequences, snap.queued_requests, snap.queued_tokens) == (0, 0, 0)


async def test_one_waiting_for_cells_counts_its_expected_output_as_queued(
    engine: LlamaCppEngine,
) -> None:
    bounded = EngineRequest("big", prompt_token_ids=PROMPT, max_tokens=200, logit_bias=NO_SPECIALS)
    big = engine.generate(bounded)
    assert isinstance(await anext(big), Scheduled)  # holds 208 of the 256 cells
    waiting = engine.generate(unbounded("waits", expected=100))  # needs 108: waits
    pending = asyncio.ensure_future(anext(waiting))
    try:
        for _ in range(200):
            if engine.stats().queued_requests:
                break
            await asyncio.sleep(0.005)
        assert engine.stats().queued_tokens == len(PROMPT) + 100  # not + the context's 256
    finally:
        await big.aclose()
        assert isinstance(await pending, Scheduled)  # admitted once the big one ended
        await waiting.aclose()
