"""Prefix reuse in the llama.cpp batched engine, on the real SmolLM2.

A second request sharing a ~1,000-token prefix starts from the first one's KV: it
reports the cached tokens, the engine evaluates only the rest (its own count), and
greedy output equals a cold run's token for token. Cached prefixes live in host
memory, not in the context's cells, within a token limit (LRU); the summary lists
the chains.

Prefill is the cost here (a 1,000-token prompt takes a minute and more on a busy
2-core machine with one thread), so each test runs as few cold prompts as it can.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from modelyard.prefix import chain_of_messages, chain_of_prompt
from tests.engine_runs import run
from worker.counters import SequenceCounters
from worker.engines.base import (
    ChatTurn,
    EngineRequest,
    Finished,
    FinishReason,
    ModelSpec,
    Piece,
    SamplingConfig,
    Scheduled,
)
from worker.engines.llama_cpp import LlamaCppEngine
from worker.engines.llama_prefix import MIN_EVALUATED
from worker.engines.prefix_summary import MAX_SUMMARY_LINKS

pytestmark = pytest.mark.asyncio(loop_scope="module")

GREEDY = SamplingConfig(temperature=0.0)
COLOURS = ("red", "green", "blue", "yellow", "white", "black", "orange")
# ~1,050 tokens of SmolLM2's tokenizer: a shared document in front of different questions.
PREFIX = "Inventory notes.\n" + "\n".join(
    f"Box {i} is {COLOURS[i % 7]} and holds {i * 7 % 97} marbles and {i % 5} dice."
    for i in range(60)
)


# Whole greedy outputs are compared with a cold run's: reused prompt KV is bit-identical
# to a prefill's (worker/engines/llama_prefix.py says when, and when not).
COMPARED = 32
SHORT = "\n".join(PREFIX.splitlines()[:15])  # ~250 tokens


def spec(
    path: Path, *, context: int, share: float, parallel: int = 2, replies: bool = True
) -> ModelSpec:
    return ModelSpec(
        "smollm2@1",
        path,
        context_length=context,
        threads=1,
        max_parallel_sequences=parallel,
        prefix_cache_share=share,
        extra={} if replies else {"prefix_cache_replies": "0"},
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def warm(smollm2_gguf: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(SequenceCounters())
    # Room for two ~1,090-token entries in host memory (each holds its whole KV).
    await engine.load(spec(smollm2_gguf, context=4096, share=0.75))
    yield engine
    await engine.unload()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cold(smollm2_gguf: Path) -> AsyncIterator[LlamaCppEngine]:
    """The same model without a prefix cache: every prompt prefilled whole."""
    engine = LlamaCppEngine(SequenceCounters())
    await engine.load(spec(smollm2_gguf, context=4096, share=0.0))
    yield engine
    await engine.unload()


def ask(request_id: str, question: str, max_tokens: int = COMPARED) -> EngineRequest:
    return EngineRequest(
        request_id,
        prompt=f"{PREFIX}\nQuestion: {question}\nAnswer:",
        sampling=GREEDY,
        max_tokens=max_tokens,
    )


async def test_a_shared_prefix_is_not_evaluated_again_and_the_output_is_unchanged(
    warm: LlamaCppEngine, cold: LlamaCppEngine
) -> None:
    cold_tokens, first = await run(warm, ask("first", "Which colour is box 12?"))
    assert first.input_tokens >= 1000 and first.cached_input_tokens == 0
    assert warm.evaluated_prompt_tokens("first") == first.input_tokens  # a cold run

    second = ask("second", "How many dice are in box 33?")
    warm_tokens, finished = await run(warm, second)
    assert finished.cached_input_tokens >= 900
    evaluated = warm.evaluated_prompt_tokens("second")
    assert evaluated is not None and 0 < evaluated <= finished.input_tokens - 900
    assert evaluated == finished.input_tokens - finished.cached_input_tokens
    # Greedy output from the reused prefix equals a cold prefill's, token for token.
    cold_second, _ = await run(cold, ask("cold-second", "How many dice are in box 33?"))
    assert cold.evaluated_prompt_tokens("cold-second") == finished.input_tokens
    assert len(warm_tokens) > 8 and warm_tokens == cold_second

    # The first request again, from the cache: all but its last two tokens reused.
    tokens, again = await run(warm, ask("again", "Which colour is box 12?"))
    assert again.cached_input_tokens == again.input_tokens - MIN_EVALUATED
    assert warm.evaluated_prompt_tokens("again") == MIN_EVALUATED
    assert tokens == cold_tokens

    summary = warm.prefix_summary()
    assert summary is not None
    assert (
        summary.link_hashes[0]
        == chain_of_prompt(ask("", "Which colour is box 12?").prompt).hashes[-1]
    )
    assert chain_of_prompt(second.prompt).hashes[-1] in summary.link_hashes
    assert 0 < summary.cached_tokens <= summary.cached_tokens_limit == 3072
    assert len(summary.link_hashes) <= MAX_SUMMARY_LINKS
    assert warm.stats().cached_prompt_tokens_total >= finished.cached_input_tokens


async def test_the_next_chat_turn_reuses_the_history_and_the_reply(
    warm: LlamaCppEngine,
) -> None:
    turn1 = (ChatTurn("system", SHORT), ChatTurn("user", "Which colour is box 5?"))
    reply_tokens, first = await run(
        warm, EngineRequest("chat1", messages=turn1, sampling=GREEDY, max_tokens=16)
    )
    assert first.reason in (FinishReason.STOP, FinishReason.LENGTH)
    reply = bytes(warm._model.detokenize(reply_tokens)).decode()
    with_reply = (*turn1, ChatTurn("assistant", reply))
    summary = warm.prefix_summary()
    assert summary is not None
    assert summary.link_hashes[0] == chain_of_messages(with_reply).hashes[-1]

    messages = (*with_reply, ChatTurn("user", "And which colour is box 6?"))
    tokens, second = await run(
        warm, EngineRequest("chat2", messages=messages, sampling=GREEDY, max_tokens=COMPARED)
    )
    # Beyond the first turn's prompt: the reply's KV is reused too.
    assert second.cached_input_tokens > first.input_tokens
    assert warm.evaluated_prompt_tokens("chat2") == (
        second.input_tokens - second.cached_input_tokens
    )
    assert len(tokens) > 0 and second.reason in (FinishReason.STOP, FinishReason.LENGTH)


async def test_without_replies_a_chat_turn_reuses_the_prompt_and_equals_a_cold_run(
    smollm2_gguf: Path, cold: LlamaCppEngine
) -> None:
    """`prefix_cache_replies: "0"` keeps what prefill computed only: the next turn
    prefills the last reply again, and its greedy output equals a cold run's."""
    engine = LlamaCppEngine(SequenceCounters())
    await engine.load(spec(smollm2_gguf, context=2048, share=0.5, replies=False))
    try:
        turn1 = (ChatTurn("system", SHORT), ChatTurn("user", "Which colour is box 5?"))
        reply_tokens, first = await run(
            engine, EngineRequest("exact1", messages=turn1, sampling=GREEDY, max_tokens=16)
        )
        reply = bytes(engine._model.detokenize(reply_tokens)).decode()
        summary = engine.prefix_summary()
        assert summary is not None and summary.cached_tokens == first.input_tokens
        assert summary.link_hashes[0] == chain_of_messages(turn1).hashes[-1]

        messages = (
            *turn1,
            ChatTurn("assistant", reply),
            ChatTurn("user", "And which colour is box 6?"),
        )
        ask2 = EngineRequest("exact2", messages=messages, sampling=GREEDY, max_tokens=COMPARED)
        tokens, second = await run(engine, ask2)
        assert second.cached_input_tokens == first.input_tokens  # the prompt, not the reply
        cold_tokens, _ = await run(
            cold, EngineRequest("cold2", messages=messages, sampling=GREEDY, max_tokens=COMPARED)
        )
        assert len(tokens) > 4 and tokens == cold_tokens
    finally:
        await engine.unload()


async def test_cached_prefixes_hold_no_cells_and_stay_within_their_token_limit(
    smollm2_gguf: Path,
) -> None:
    engine = LlamaCppEngine(SequenceCounters())
    await engine.load(spec(smollm2_gguf, context=512, share=0.5))  # 256 tokens of cache
    try:
        kept = EngineRequest("kept", prompt=SHORT[:700], sampling=GREEDY, max_tokens=4)
        _, finished = await run(engine, kept)
        summary = engine.prefix_summary()
        assert summary is not None and summary.cached_tokens == finished.input_tokens + 3
        assert 150 < summary.cached_tokens <= summary.cached_tokens_limit == 256
        held = chain_of_prompt(kept.prompt).hashes[-1]
        assert held in summary.link_hashes
        # The context has no cells in use: the entry lives in host memory, so the
        # attention of later requests does not run over it.
        assert _cells_in_use(engine) == 0

        # Two live requests reserving ~210 cells each fill the context together, and
        # both run at once while the cache keeps its entry.
        count = ", ".join(str(n) for n in range(1, 30))
        live = [
            EngineRequest(f"live{i}", prompt=f"{word}: {count}", sampling=GREEDY, max_tokens=100)
            for i, word in enumerate(("Numbers", "Counting"))
        ]
        first = engine.generate(live[0])
        assert isinstance(await anext(first), Scheduled)
        await anext(first)  # decoding
        second = engine.generate(live[1])
        assert isinstance(await anext(second), Scheduled)
        assert engine.stats().running_sequences == 2  # it did not wait for the first
        summary = engine.prefix_summary()
        assert summary is not None and held in summary.link_hashes
        for stream in (first, second):
            events = [e async for e in stream]
            end = events[-1]
            assert isinstance(end, Finished) and end.reason is FinishReason.LENGTH
        # Each finished request is kept, least recently used ones go first once the
        # entries would pass the 256-token limit.
        summary = engine.prefix_summary()
        assert summary is not None and summary.cached_tokens <= 256
        assert held not in summary.link_hashes
        assert chain_of_prompt(live[1].prompt).hashes[-1] in summary.link_hashes

        # Evicted, the first prompt is prefilled cold again.
        _, again = await run(engine, kept)
        assert again.cached_input_tokens == 0
    finally:
        await engine.unload()
    assert engine.prefix_summary() is None  # unloading frees the cache with the context


def _cells_in_use(engine: LlamaCppEngine) -> int:
    """Positions held by any sequence of the engine's context (live ids 0..n-1)."""
    import llama_cpp

    memory = llama_cpp.llama_get_memory(engine._ctx.ctx)
    return sum(llama_cpp.llama_memory_seq_pos_max(memory, seq) + 1 for seq in range(2))


async def test_a_prompt_one_token_past_a_batch_reuses_to_the_same_logits(
    smollm2_gguf: Path,
) -> None:
    """A 65-token prompt with 64-token batches: the cold prefill leaves its last two
    tokens to the second step (a one-token batch rounds differently), so a run that
    reuses all but two gets the same log-probabilities, float for float."""
    batch = 64

    def engine_spec(share: float) -> ModelSpec:
        base = spec(smollm2_gguf, context=512, share=share)
        return dataclasses.replace(base, batch_size=batch)

    warm, cold = LlamaCppEngine(SequenceCounters()), LlamaCppEngine(SequenceCounters())
    await warm.load(engine_spec(0.5))
    await cold.load(engine_spec(0.0))
    try:
        text = PREFIX[:600]
        ids = warm._prompt_tokens(EngineRequest("probe", prompt=text, max_tokens=1))[: batch + 1]

        async def logprobs(engine: LlamaCppEngine, request_id: str) -> list[float]:
            req = EngineRequest(
                request_id, prompt_token_ids=ids, sampling=GREEDY, max_tokens=8, logprobs=0
            )
            events = [e async for e in engine.generate(req)]
            return [lp.logprob for e in events if isinstance(e, Piece) for lp in e.logprobs]

        first = await logprobs(warm, "first")
        reused = await logprobs(warm, "reused")
        assert warm.evaluated_prompt_tokens("reused") == MIN_EVALUATED
        assert len(first) == 8 and reused == first == await logprobs(cold, "cold")
    finally:
        await warm.unload()
        await cold.unload()
