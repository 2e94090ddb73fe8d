"""The simulated engine: deterministic text, the latency model on a virtual clock, batching,
cancellation, unload, stop sequences, limits and counters.

No assertion reads the wall clock: the engine's clock is a virtual one that records
every sleep the step loop asks for, so a loaded machine cannot break these tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
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
    OutputFormat,
    Piece,
    SamplingConfig,
    Scheduled,
)
from worker.engines.common import EngineNotLoaded
from worker.engines.sim import SIM_OPTIONS, SimClock, SimEngine
from worker.engines.sim_options import SimOptions, parse_options
from worker.engines.sim_vocab import EOS_ID, SimVocabulary

GREEDY = SamplingConfig(temperature=0.0)
PROMPT = "The capital of France is"
PROMPT_TOKENS = 7  # the, cap+ital, of, fran+ce, is: words, long ones in 4-character pieces
# Round numbers in ms: sleeps compare exactly after / 1000 with approx.
DECODE_MS, PREFILL_MS, SLOWDOWN = 10.0, 0.5, 0.25


class VirtualClock(SimClock):
    """Time advances only when the engine sleeps (plus `work_s` per reading, to play a
    busy loop); each sleep lets the consumers run before the next step."""

    def __init__(self, work_s: float = 0.0) -> None:
        self.t = 0.0
        self.work_s = work_s
        self.sleeps: list[float] = []

    def now(self) -> float:
        self.t += self.work_s
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        for _ in range(4):
            await asyncio.sleep(0)


@dataclass
class Run:
    events: list[EngineEvent]

    @property
    def finished(self) -> Finished:
        last = self.events[-1]
        assert isinstance(last, Finished)
        return last

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Piece))

    @property
    def token_ids(self) -> list[int]:
        return [t for e in self.events if isinstance(e, Piece) for t in e.token_ids]


def options(**overrides: object) -> dict[str, str]:
    base = {
        "sim_decode_ms_per_token": str(DECODE_MS),
        "sim_prefill_ms_per_token": str(PREFILL_MS),
        "sim_batch_slowdown": str(SLOWDOWN),
        "sim_eos_probability": "0",
    }
    return {**base, **{f"sim_{k}": str(v) for k, v in overrides.items()}}


def spec(
    extra: Mapping[str, str], *, context: int = 2048, parallel: int = 8, prefix_share: float = 0
) -> ModelSpec:
    return ModelSpec(
        key="sim@1",
        path=Path("/dev/null"),  # the sim reads no weights
        context_length=context,
        threads=1,
        max_parallel_sequences=parallel,
        extra=extra,
        # Off unless a test is about it: the latency model's timings assume a cold prompt.
        prefix_cache_share=prefix_share,
    )


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def engine(clock: VirtualClock) -> AsyncIterator[SimEngine]:
    engine = SimEngine(SequenceCounters(), clock=clock)
    await engine.load(spec(options()))
    yield engine
    await engine.unload()


def request(
    request_id: str = "r",
    prompt: str = PROMPT,
    *,
    max_tokens: int = 16,
    sampling: SamplingConfig = GREEDY,
    stop: Sequence[str] = (),
    messages: Sequence[ChatTurn] = (),
) -> EngineRequest:
    return EngineRequest(
        request_id,
        prompt=prompt,
        messages=messages,
        sampling=sampling,
        max_tokens=max_tokens,
        stop=stop,
    )


async def run(engine: SimEngine, req: EngineRequest) -> Run:
    return Run([event async for event in engine.generate(req)])


async def started(stream: AsyncGenerator[EngineEvent, None]) -> None:
    assert isinstance(await anext(stream), Scheduled)


# -- determinism and text -----------------------------------------------------------


async def test_greedy_text_depends_on_the_prompt_only(engine: SimEngine) -> None:
    first = await run(engine, request("a"))
    again = await run(engine, request("b", sampling=SamplingConfig(temperature=0, seed=7)))
    other = await run(engine, request("c", prompt="A different prompt"))
    assert first.token_ids == again.token_ids and first.text == again.text
    assert first.token_ids != other.token_ids
    # Another engine, the same model: the same words (nothing depends on the process).
    fresh = SimEngine(clock=VirtualClock())
    await fresh.load(spec(options()))
    assert (await run(fresh, request("d"))).text == first.text
    await fresh.unload()


async def test_sampling_is_reproducible_with_a_seed(engine: SimEngine) -> None:
    seeded = SamplingConfig(temperature=0.8, seed=42)
    one = await run(engine, request("a", sampling=seeded))
    two = await run(engine, request("b", sampling=seeded))
    three = await run(engine, request("c", sampling=SamplingConfig(temperature=0.8, seed=43)))
    greedy = await run(engine, request("d"))
    assert one.token_ids == two.token_ids
    assert one.token_ids != three.token_ids and one.token_ids != greedy.token_ids


async def test_tokens_are_vocabulary_words_and_the_prompt_is_counted(engine: SimEngine) -> None:
    vocab = SimVocabulary(int(SIM_OPTIONS["sim_vocab_size"]))
    result = await run(engine, request(max_tokens=12))
    assert result.text == "".join(vocab.text(t) for t in result.token_ids)
    assert all(0 < t < vocab.size for t in result.token_ids)
    assert result.text.startswith(" ") and len(result.text.split()) == 12
    assert result.finished.input_tokens == len(vocab.encode(PROMPT)) == PROMPT_TOKENS
    # The sim's own words read back as the same ids: its output is a valid prompt.
    assert vocab.encode(result.text) == result.token_ids


async def test_chat_messages_are_rendered_and_counted(engine: SimEngine) -> None:
    turns = (ChatTurn("system", "Be brief."), ChatTurn("user", "Hi there"))
    result = await run(engine, request(prompt="", messages=turns, max_tokens=3))
    vocab = SimVocabulary(int(SIM_OPTIONS["sim_vocab_size"]))
    assert result.finished.input_tokens == len(vocab.encode(vocab.render_chat(turns)))
    assert result.finished.reason is FinishReason.LENGTH


# -- the latency model ----------------------------------------------------------------


async def test_load_time_and_step_times_follow_the_model(clock: VirtualClock) -> None:
    engine = SimEngine(clock=clock)
    info = await engine.load(spec(options(load_ms=1500)))
    assert clock.sleeps == [pytest.approx(1.5)]
    assert info.engine == "sim" and info.has_chat_template and info.vocab_size == 8192
    clock.sleeps.clear()
    await run(engine, request(max_tokens=4))
    first = (PROMPT_TOKENS * PREFILL_MS + DECODE_MS) / 1000  # prefill, then the first token
    assert clock.sleeps == pytest.approx([first] + [DECODE_MS / 1000] * 3)
    await engine.unload()


async def test_a_batch_of_n_steps_slower_but_yields_more(
    engine: SimEngine, clock: VirtualClock
) -> None:
    await run(engine, request(max_tokens=8))
    solo_time = sum(clock.sleeps)
    clock.sleeps.clear()
    results = await asyncio.gather(*(run(engine, request(f"r{i}", max_tokens=8)) for i in range(4)))
    assert all(r.finished.output_tokens == 8 for r in results)
    step = DECODE_MS * (1 + SLOWDOWN * 3) / 1000
    # One shared step per token: the four prompts' prefill joins the first.
    assert clock.sleeps == pytest.approx(
        [step + 4 * PROMPT_TOKENS * PREFILL_MS / 1000] + [step] * 7
    )
    batch_time = sum(clock.sleeps)
    # Throughput: 4x the tokens in 1.75x the decode time.
    assert (4 * 8 / batch_time) / (8 / solo_time) == pytest.approx(
        4
        * (PROMPT_TOKENS * PREFILL_MS + 8 * DECODE_MS)
        / (4 * PROMPT_TOKENS * PREFILL_MS + 8 * DECODE_MS * 1.75)
    )


async def test_a_sequence_joining_later_pays_its_prefill_in_that_step(
    engine: SimEngine, clock: VirtualClock
) -> None:
    first = engine.generate(request("a", max_tokens=6))
    await started(first)
    await anext(first)  # one token in: the step loop is running
    late = asyncio.ensure_future(run(engine, request("b", max_tokens=2)))
    rest = [event async for event in first]
    await late
    assert isinstance(rest[-1], Finished)
    two = DECODE_MS * (1 + SLOWDOWN) / 1000
    joined = two + PROMPT_TOKENS * PREFILL_MS / 1000
    assert [s == pytest.approx(joined) for s in clock.sleeps].count(True) == 1
    assert [s == pytest.approx(two) for s in clock.sleeps].count(True) == 1  # then one of two


async def test_time_spent_between_steps_is_inside_the_step(clock: VirtualClock) -> None:
    busy = VirtualClock(work_s=0.002)  # each step's bookkeeping costs 2 ms of the clock
    engine = SimEngine(clock=busy)
    await engine.load(spec(options(prefill_ms_per_token=0)))
    await run(engine, request(max_tokens=5))
    step = DECODE_MS / 1000
    # Timed against deadlines: later steps sleep less by the work, not a step plus work.
    assert busy.sleeps[0] == pytest.approx(step)
    assert busy.sleeps[1:] == pytest.approx([step - 0.002] * 4)
    await engine.unload()


async def test_the_workers_token_delay_adds_to_every_step(clock: VirtualClock) -> None:
    engine = SimEngine(clock=clock)
    slow = dataclasses.replace(spec(options(prefill_ms_per_token=0)), token_delay_s=0.005)
    await engine.load(slow)
    await run(engine, request(max_tokens=3))
    assert clock.sleeps == pytest.approx([DECODE_MS / 1000 + 0.005] * 3)
    await engine.unload()


async def test_no_more_than_max_sequences_run(clock: VirtualClock) -> None:
    counters = SequenceCounters()
    engine = SimEngine(counters, clock=clock)
    await engine.load(spec(options(max_sequences=2)))
    streams = [engine.generate(request(f"r{i}", max_tokens=3)) for i in range(3)]
    pending = [asyncio.ensure_future(anext(s)) for s in streams]
    await asyncio.wait(pending[:2])
    assert counters.snapshot().running_sequences == 2
    assert not pending[2].done()  # waits for a slot
    for stream in streams[:2]:
        async for _ in stream:
            pass
    assert isinstance(await pending[2], Scheduled)
    assert counters.snapshot().running_sequences == 1
    await streams[2].aclose()
    assert counters.snapshot().running_sequences == 0
    await engine.unload()


# -- cancellation and unload ----------------------------------------------------------


async def test_abort_frees_the_slot_at_once(clock: VirtualClock) -> None:
    counters = SequenceCounters()
    engine = SimEngine(counters, clock=clock)
    await engine.load(spec(options(max_sequences=1)))
    long = engine.generate(request("long", max_tokens=1000))
    await started(long)
    await anext(long)
    waiting = asyncio.ensure_future(run(engine, request("next", max_tokens=2)))
    await asyncio.sleep(0)
    engine.abort("long")
    assert counters.snapshot().running_sequences == 0  # before the step loop runs again
    rest = [event async for event in long]
    assert isinstance(rest[-1], Finished) and rest[-1].reason is FinishReason.CANCELLED
    assert rest[-1].output_tokens < 1000
    assert (await waiting).finished.reason is FinishReason.LENGTH
    engine.abort("unknown")  # harmless
    await engine.unload()


async def test_closing_the_stream_cancels(engine: SimEngine) -> None:
    stream = engine.generate(request(max_tokens=1000))
    await started(stream)
    await anext(stream)
    assert engine.stats().running_sequences == 1
    await stream.aclose()
    assert engine.stats().running_sequences == 0


async def test_unload_ends_running_and_waiting_streams_as_cancelled(clock: VirtualClock) -> None:
    engine = SimEngine(clock=clock)
    await engine.load(spec(options(max_sequences=1)))
    running = engine.generate(request("a", max_tokens=1000))
    await started(running)
    waiting = asyncio.ensure_future(run(engine, request("b", max_tokens=1000)))
    await asyncio.sleep(0)
    await engine.unload()
    rest = [event async for event in running]
    assert isinstance(rest[-1], Finished) and rest[-1].reason is FinishReason.CANCELLED
    assert (await waiting).finished.reason is FinishReason.CANCELLED
    assert engine.stats().running_sequences == 0
    with pytest.raises(EngineNotLoaded):
        await run(engine, request())


# -- stop sequences and limits --------------------------------------------------------


async def test_a_stop_sequence_cuts_the_text_before_it(engine: SimEngine) -> None:
    words = (await run(engine, request(max_tokens=12))).text.split(" ")[1:]
    stop = f" {words[6]}"
    result = await run(engine, request(max_tokens=12, stop=[stop]))
    assert result.finished.reason is FinishReason.STOP_SEQUENCE
    assert result.finished.stop_sequence == stop
    assert result.text == "".join(f" {w}" for w in words[:6])
    assert result.finished.output_tokens == 7  # the token that completed the stop counts
    # Split across tokens: the end of one word and the start of the next.
    split = f"{words[2][-1]} {words[3][:1]}"
    cut = await run(engine, request(max_tokens=12, stop=["zzzz", split]))
    assert cut.finished.stop_sequence == split
    assert cut.text == "".join(f" {w}" for w in words[:2]) + f" {words[2][:-1]}"


async def test_max_tokens_and_the_context_window(clock: VirtualClock) -> None:
    engine = SimEngine(clock=clock)
    await engine.load(spec(options(context_length=16), context=2048))
    five = await run(engine, request(max_tokens=5))
    assert (five.finished.reason, five.finished.output_tokens) == (FinishReason.LENGTH, 5)
    full = await run(engine, request(max_tokens=100))  # 7 prompt tokens in a window of 16
    assert full.finished.reason is FinishReason.CONTEXT_LENGTH
    assert full.finished.output_tokens == 16 - PROMPT_TOKENS
    with pytest.raises(InvalidArgument, match="context window of 16"):
        await run(engine, request(prompt="x " * 16))
    with pytest.raises(InvalidArgument):
        await run(engine, request(max_tokens=0))
    await engine.unload()


async def test_end_of_sequence_is_deterministic_per_prompt(clock: VirtualClock) -> None:
    engine = SimEngine(clock=clock)
    await engine.load(spec(options(eos_probability=0.2)))
    prompts = [f"question number {i}" for i in range(20)]
    first = [await run(engine, request(prompt=p, max_tokens=50)) for p in prompts]
    again = [await run(engine, request(prompt=p, max_tokens=50)) for p in prompts]
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    reasons = {r.finished.reason for r in first}
    assert FinishReason.STOP in reasons  # some end early, at a prompt-determined token
    assert all(EOS_ID not in r.token_ids for r in first)  # EOS is never streamed
    await engine.unload()
    always = SimEngine(clock=clock)
    await always.load(spec(options(eos_probability=1)))
    result = await run(always, request())
    assert (result.finished.reason, result.finished.output_tokens) == (FinishReason.STOP, 0)
    await always.unload()


async def test_prompt_token_ids_are_used_and_checked(engine: SimEngine) -> None:
    ids = EngineRequest("ids", prompt_token_ids=[5, 6, 7], sampling=GREEDY, max_tokens=2)
    assert (await run(engine, ids)).finished.input_tokens == 3
    bad = EngineRequest("bad", prompt_token_ids=[5, 1 << 20], sampling=GREEDY, max_tokens=2)
    with pytest.raises(InvalidArgument, match="token ids"):
        await run(engine, bad)


# -- counters and options -------------------------------------------------------------


async def test_counters_report_running_sequences_and_tokens(clock: VirtualClock) -> None:
    counters = SequenceCounters()
    engine = SimEngine(counters, clock=clock)
    await engine.load(spec(options()))
    streams = [engine.generate(request(f"r{i}", max_tokens=6)) for i in range(3)]
    for stream in streams:
        await started(stream)
    assert engine.stats().running_sequences == 3
    for stream in streams:
        async for _ in stream:
            pass
    snapshot = engine.stats()
    assert snapshot.running_sequences == 0
    assert snapshot.generated_tokens_total == 18
    assert snapshot.tokens_per_second > 0
    await engine.unload()


def test_options_have_names_and_defaults() -> None:
    assert SIM_OPTIONS["sim_decode_ms_per_token"] == "20.0"
    assert set(SIM_OPTIONS) >= {
        "sim_prefill_ms_per_token",
        "sim_batch_slowdown",
        "sim_max_sequences",
        "sim_load_ms",
        "sim_vocab_size",
        "sim_context_length",
        "sim_memory_bytes",
        "sim_eos_probability",
    }
    assert parse_options({"sha256": "x"}) == SimOptions()
    parsed = parse_options({"sim_max_sequences": "3", "sim_decode_ms_per_token": "1.5"})
    assert (parsed.max_sequences, parsed.decode_ms_per_token) == (3, 1.5)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("sim_decode_ms_per_token", "fast", "is not a number"),
        ("sim_max_sequences", "2.5", "is not an integer"),
        ("sim_batch_slowdown", "-1", "out of range"),
        ("sim_vocab_size", "3", "out of range"),
        ("sim_eos_probability", "1.5", "out of range"),
        ("sim_prefill_ms_per_token", "nan", "not finite"),
        ("sim_decode_ms", "1", "not an option of the sim engine"),
    ],
)
async def test_a_bad_option_fails_the_load(key: str, value: str, says: str) -> None:
    engine = SimEngine(clock=VirtualClock())
    with pytest.raises(InvalidArgument, match=says) as caught:
        await engine.load(spec({key: value}))
    assert key in caught.value.message
    with pytest.raises(EngineNotLoaded):
        await run(engine, request())


def test_the_registry_allows_exactly_the_sim_options() -> None:
    from modelyard.engine_options import ALLOWED
    from modelyard.v1 import common_pb2
    from worker.engines.sim_options import SIM_OPTIONS

    assert ALLOWED[common_pb2.ENGINE_SIM] == frozenset(SIM_OPTIONS)


# -- structured output, logprobs and logit bias -----------------------------------------


async def test_logprobs_are_the_sims_own_uniform_distribution(engine: SimEngine) -> None:
    req = dataclasses.replace(request(max_tokens=4), logprobs=2)
    pieces = [e async for e in engine.generate(req) if isinstance(e, Piece)]
    logprobs = [lp for p in pieces for lp in p.logprobs]
    assert [lp.token_id for lp in logprobs] == [t for p in pieces for t in p.token_ids]
    n_words = int(SIM_OPTIONS["sim_vocab_size"]) - 1  # with EOS off, every word alike
    for lp in logprobs:
        assert lp.logprob == pytest.approx(-math.log(n_words))
        assert [t.logprob for t in lp.top] == [lp.logprob] * 2
    assert not [e for e in (await run(engine, request())).events if getattr(e, "logprobs", ())]


async def test_what_the_sim_cannot_do_is_refused_never_ignored(engine: SimEngine) -> None:
    for patch, field in (
        ({"output_format": OutputFormat()}, "sampling.response_format"),
        ({"logit_bias": {1: 5.0}}, "sampling.logit_bias"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            await run(engine, dataclasses.replace(request(), **patch))
        assert [v.field for v in caught.value.violations] == [field]
