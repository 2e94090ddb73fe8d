"""The simulated engine's prefix cache: cached tokens, cheaper prefill, the LRU and its summary.

On the virtual clock of test_engine_sim: the prefill a request pays is read from the
step loop's recorded sleeps, never from the wall clock.
"""

from __future__ import annotations

import pytest

from modelyard.prefix import PROMPT_BLOCK_BYTES, chain_of_messages, chain_of_prompt
from tests.unit.worker.test_engine_sim import (
    DECODE_MS,
    PREFILL_MS,
    VirtualClock,
    options,
    request,
    run,
    spec,
)
from worker.counters import SequenceCounters
from worker.engines.base import ChatTurn
from worker.engines.prefix_summary import MAX_SUMMARY_LINKS, summary_links
from worker.engines.sim import SimEngine
from worker.engines.sim_vocab import SimVocabulary

LONG = " ".join(f"w{i}" for i in range(300))  # ~1,500 bytes: five full 256-byte blocks
VOCAB = SimVocabulary(8192)


async def loaded(clock: VirtualClock, share: float = 0.5, context: int = 2048) -> SimEngine:
    engine = SimEngine(SequenceCounters(), clock=clock)
    await engine.load(spec(options(), context=context, prefix_share=share))
    return engine


def prefill_s(clock: VirtualClock) -> float:
    """The first step's time beyond a lone decode step: the prompt's prefill."""
    return clock.sleeps[0] - DECODE_MS / 1000


async def test_a_repeated_prompt_is_served_from_the_cache_up_to_its_last_full_block() -> None:
    clock = VirtualClock()
    engine = await loaded(clock)
    cold = await run(engine, request("a", LONG, max_tokens=2))
    prompt_tokens = cold.finished.input_tokens
    assert cold.finished.cached_input_tokens == 0
    assert prefill_s(clock) == pytest.approx(prompt_tokens * PREFILL_MS / 1000)
    clock.sleeps.clear()
    longer = LONG + " and then some more words"
    warm = await run(engine, request("b", longer, max_tokens=2))
    held = len(LONG.encode()) // PROMPT_BLOCK_BYTES * PROMPT_BLOCK_BYTES
    expected = len(VOCAB.encode(LONG[:held]))
    assert warm.finished.cached_input_tokens == expected > 0
    uncached = warm.finished.input_tokens - expected
    assert prefill_s(clock) == pytest.approx(uncached * PREFILL_MS / 1000)
    snap = engine.stats()
    assert snap.prompt_tokens_total == prompt_tokens + warm.finished.input_tokens
    assert snap.cached_prompt_tokens_total == expected
    await engine.unload()


async def test_the_next_chat_turn_holds_the_history_and_the_reply() -> None:
    clock = VirtualClock()
    engine = await loaded(clock)
    turn1 = (ChatTurn("system", "Answer in riddles."), ChatTurn("user", LONG))
    first = await run(engine, request("a", "", messages=turn1, max_tokens=5))
    summary = engine.prefix_summary()
    assert summary is not None and summary.scheme == "modelyard-prefix-v1"
    with_reply = (*turn1, ChatTurn("assistant", first.text))
    # Most recent first, the longest link of each chain first: the next turn's prefix leads.
    assert summary.link_hashes[0] == chain_of_messages(with_reply).hashes[-1]
    assert set(chain_of_messages(turn1).hashes) <= set(summary.link_hashes)
    assert summary.cached_tokens == first.finished.input_tokens + 5
    clock.sleeps.clear()
    turn2 = (*with_reply, ChatTurn("user", "Again?"))
    second = await run(engine, request("b", "", messages=turn2, max_tokens=2))
    lines = VOCAB.render_chat(with_reply).rsplit("\n", 1)[0]
    assert second.finished.cached_input_tokens == len(VOCAB.encode(lines))
    uncached = second.finished.input_tokens - second.finished.cached_input_tokens
    assert prefill_s(clock) == pytest.approx(uncached * PREFILL_MS / 1000)
    await engine.unload()


async def test_the_cache_is_an_lru_bounded_by_tokens() -> None:
    clock = VirtualClock()
    engine = await loaded(clock, share=0.25, context=2048)  # 512 tokens
    prompts = [f"topic {n} " + LONG[: 700 + n] for n in range(3)]  # ~150 tokens each
    for n, prompt in enumerate(prompts):
        await run(engine, request(f"p{n}", prompt, max_tokens=2))
    # A hit makes the entry it hit the newest: adding this one evicts 1, not 0.
    hit = await run(engine, request("p0more", prompts[0] + " and more", max_tokens=2))
    assert hit.finished.cached_input_tokens > 0
    summary = engine.prefix_summary()
    assert summary is not None and 0 < summary.cached_tokens <= summary.cached_tokens_limit == 512
    held = set(summary.link_hashes)
    assert chain_of_prompt(prompts[0]).hashes[-1] in held
    assert chain_of_prompt(prompts[1]).hashes[-1] not in held
    assert chain_of_prompt(prompts[2]).hashes[-1] in held
    evicted = await run(engine, request("p1again", prompts[1], max_tokens=2))
    assert evicted.finished.cached_input_tokens == 0
    await engine.unload()


async def test_a_share_of_zero_turns_reuse_off() -> None:
    clock = VirtualClock()
    engine = await loaded(clock, share=0)
    await run(engine, request("a", LONG, max_tokens=2))
    again = await run(engine, request("b", LONG, max_tokens=2))
    assert again.finished.cached_input_tokens == 0
    assert engine.prefix_summary() is None
    assert engine.stats().prompt_tokens_total == 2 * again.finished.input_tokens
    await engine.unload()


def test_the_summary_is_capped_and_keeps_the_newest_links() -> None:
    chains = [tuple(range(n * 100, n * 100 + 100)) for n in range(8)]  # 800 links, newest first
    links = summary_links(chains)
    assert len(links) == MAX_SUMMARY_LINKS
    assert links[0] == 99 and links[:100] == tuple(range(99, -1, -1))
    assert summary_links([(1, 2), (1, 2, 3)]) == (2, 1, 3)  # no repeats
