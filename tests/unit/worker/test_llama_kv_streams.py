"""The llama.cpp engine with a KV stream per sequence (`load_options.extra.kv_unified = "0"`),
on the real SmolLM2.

Each sequence then owns n_ctx / sequences cells: the engine reports that as the model's
context window, refuses a longer prompt, ends a sequence that fills its stream with
CONTEXT_LENGTH (llama_decode would fail otherwise), and still batches sequences and
reuses cached prefixes. Prompts stay short: prefill is the cost on a 2-core machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from modelyard.errors import InvalidArgument
from tests.engine_runs import drain, run
from worker.counters import SequenceCounters
from worker.engines.base import (
    EngineRequest,
    FinishReason,
    ModelSpec,
    SamplingConfig,
    Scheduled,
)
from worker.engines.llama_cpp import LlamaCppEngine
from worker.engines.llama_prefix import MIN_EVALUATED

pytestmark = pytest.mark.asyncio(loop_scope="module")

GREEDY = SamplingConfig(temperature=0.0)
CONTEXT = 1024
SEQUENCES = 2
STREAM = CONTEXT // SEQUENCES
COUNT = ", ".join(str(n) for n in range(1, 40))


def spec(path: Path, context: int = CONTEXT, **extra: str) -> ModelSpec:
    return ModelSpec(
        "smollm2@1",
        path,
        context_length=context,
        threads=1,
        max_parallel_sequences=SEQUENCES,
        prefix_cache_share=0.5,
        extra={"kv_unified": "0", **extra},
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def streams(smollm2_gguf: Path) -> AsyncIterator[tuple[LlamaCppEngine, int]]:
    engine = LlamaCppEngine(SequenceCounters())
    info = await engine.load(spec(smollm2_gguf))
    yield engine, info.context_length
    await engine.unload()


def counting(request_id: str, word: str, max_tokens: int = 8) -> EngineRequest:
    return EngineRequest(
        request_id, prompt=f"{word}: {COUNT}", sampling=GREEDY, max_tokens=max_tokens
    )


async def test_the_context_window_is_one_streams_share(
    streams: tuple[LlamaCppEngine, int],
) -> None:
    engine, window = streams
    assert window == STREAM
    too_long = EngineRequest("long", prompt=COUNT * 5, sampling=GREEDY, max_tokens=4)
    # Longer than a stream, shorter than the whole context.
    assert STREAM < len(engine._prompt_tokens(too_long)) < CONTEXT
    with pytest.raises(InvalidArgument, match=f"context window of {STREAM} tokens"):
        await run(engine, too_long)


async def test_sequences_batch_and_match_their_solo_output(
    streams: tuple[LlamaCppEngine, int],
) -> None:
    engine, _ = streams
    solo = [(await run(engine, counting(f"solo{i}", w)))[0] for i, w in enumerate(("A", "B"))]
    first = engine.generate(counting("a", "A"))
    assert isinstance(await anext(first), Scheduled)
    second = engine.generate(counting("b", "B"))
    assert isinstance(await anext(second), Scheduled)
    assert engine.stats().running_sequences == 2
    together = [await drain(stream) for stream in (first, second)]
    assert all(end.reason is FinishReason.LENGTH for _, end in together)
    assert [tokens for tokens, _ in together] == solo


async def test_a_sequence_that_fills_its_stream_ends_with_context_length(
    streams: tuple[LlamaCppEngine, int],
) -> None:
    engine, _ = streams
    prompt = "Count: " + ", ".join(str(n) for n in range(1, 400))
    tokens = engine._prompt_tokens(EngineRequest("probe", prompt=prompt, max_tokens=1))
    prompt = engine._model.detokenize(tokens[1 : STREAM - 10]).decode()  # ~10 cells left
    tokens, finished = await run(
        engine, EngineRequest("full", prompt=prompt, sampling=GREEDY, max_tokens=64)
    )
    assert finished.reason is FinishReason.CONTEXT_LENGTH
    assert 0 < len(tokens) <= 12 and finished.input_tokens + len(tokens) <= STREAM


async def test_a_cached_prefix_is_reused_within_a_stream(
    streams: tuple[LlamaCppEngine, int],
) -> None:
    engine, _ = streams
    cold, first = await run(engine, counting("cold", "Numbers", 6))
    again, second = await run(engine, counting("warm", "Numbers", 6))
    assert first.cached_input_tokens == 0
    assert second.cached_input_tokens == first.input_tokens - MIN_EVALUATED
    assert engine.evaluated_prompt_tokens("warm") == MIN_EVALUATED
    assert again == cold


async def test_kv_unified_takes_only_0_or_1(smollm2_gguf: Path) -> None:
    with pytest.raises(InvalidArgument, match="kv_unified is '0' or '1'"):
        await LlamaCppEngine(SequenceCounters()).load(spec(smollm2_gguf, kv_unified="yes"))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("flash_attn", "true", "flash_attn is '0' or '1', not 'true'"),  # was read as off
        ("n_gpu_layers", "all", "n_gpu_layers is an integer, not 'all'"),
    ],
)
async def test_other_options_with_values_the_engine_cannot_read_are_refused(
    smollm2_gguf: Path, option: str, value: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as refused:
        await LlamaCppEngine(SequenceCounters()).load(
            spec(smollm2_gguf, CONTEXT, **{option: value})
        )
    assert [v.field for v in refused.value.violations] == [f"load_options.extra.{option}"]


async def test_a_context_that_does_not_split_into_whole_streams_is_refused(
    smollm2_gguf: Path,
) -> None:
    # 1,000 / 2 streams: llama.cpp would round each up to 512, more than was budgeted.
    with pytest.raises(InvalidArgument, match="use a context of 1024 or fewer"):
        await LlamaCppEngine(SequenceCounters()).load(spec(smollm2_gguf, context=1000))
