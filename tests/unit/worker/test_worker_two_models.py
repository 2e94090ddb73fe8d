"""Two real models in a budget that holds one: swaps, right answers, memory back.

SmolLM2-135M and Gemma-3-270M (a base model: plain completion) alternate; each
answer must be that model's own greedy output (llama-cpp-python's Llama on the
same file), and the process's RSS must come back after both are unloaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.errors import ResourceExhausted
from modelyard.refs import model_key
from modelyard.v1 import common_pb2, model_pb2
from tests.engine_runs import drain
from worker.config import WorkerSettings
from worker.engines.base import EngineRequest, Finished, Piece, SamplingConfig
from worker.main import build_manager
from worker.residency import ModelManager, ResidencyState
from worker.residency.memory import rss_bytes

MiB = 1 << 20
CONTEXT = 512
PROMPT = "The capital of France is"
TOKENS = 12
# SmolLM2 is estimated at ~170 MiB and Gemma at ~330 MiB at this context: one fits.
BUDGET = 420 * MiB
# Allocator slack and libraries first loaded by the first model stay mapped.
RSS_MARGIN = 48 * MiB


def model_of(path: Path, name: str) -> model_pb2.Model:
    return model_pb2.Model(
        name=name,
        version="1",
        artifact=model_pb2.Artifact(uri=path.resolve().as_uri()),
        engines=[common_pb2.ENGINE_LLAMA_CPP],
        load_options=model_pb2.LoadOptions(context_length=CONTEXT, max_parallel_sequences=2),
    )


def reference_greedy(path: Path, threads: int) -> str:
    from llama_cpp import Llama

    llama = Llama(str(path), n_ctx=CONTEXT, n_threads=threads, verbose=False)
    try:
        out: Any = llama.create_completion(PROMPT, max_tokens=TOKENS, temperature=0)
        return str(out["choices"][0]["text"])
    finally:
        llama.close()


@pytest.fixture(scope="module")
def references(smollm2_gguf: Path, gemma_gguf: Path, settings: WorkerSettings) -> dict[str, str]:
    return {
        "smollm2": reference_greedy(smollm2_gguf, settings.threads),
        "gemma": reference_greedy(gemma_gguf, settings.threads),
    }


@pytest.fixture
def models(smollm2_gguf: Path, gemma_gguf: Path) -> Iterator[dict[str, model_pb2.Model]]:
    yield {"smollm2": model_of(smollm2_gguf, "smollm2"), "gemma": model_of(gemma_gguf, "gemma")}


async def complete(manager: ModelManager, model: model_pb2.Model) -> str:
    async with manager.acquire(model, load_if_cold=True) as lease:
        request = EngineRequest(
            "r", prompt=PROMPT, sampling=SamplingConfig(temperature=0), max_tokens=TOKENS
        )
        text = ""
        async for event in lease.engine.generate(request):
            if isinstance(event, Piece):
                text += event.text
            elif isinstance(event, Finished):
                assert event.output_tokens == TOKENS
        return text


def budgeted(settings: WorkerSettings) -> ModelManager:
    return build_manager(settings.model_copy(update={"memory_budget_bytes": BUDGET}))


async def test_alternating_requests_swap_the_models_and_memory_comes_back(
    settings: WorkerSettings, models: dict[str, model_pb2.Model], references: dict[str, str]
) -> None:
    manager = budgeted(settings)
    before = rss_bytes()
    for name in ("smollm2", "gemma", "smollm2", "gemma"):
        assert await complete(manager, models[name]) == references[name], name
        other = "gemma" if name == "smollm2" else "smollm2"
        resident = manager.get(model_key(other, "1"))
        assert resident is None or resident.state is ResidencyState.COLD
        assert manager.used_bytes <= BUDGET or len(manager.residents()) == 1
    assert manager.evictions_total == 3
    gemma = manager.get(model_key("gemma", "1"))
    assert gemma is not None and gemma.memory_bytes > 100 * MiB  # measured, not estimated
    await manager.unload(model_key("gemma", "1"))
    assert rss_bytes() - before < RSS_MARGIN
    await manager.close()


async def test_a_model_with_a_stream_in_flight_is_not_evicted(
    settings: WorkerSettings, models: dict[str, model_pb2.Model]
) -> None:
    manager = budgeted(settings)
    async with manager.acquire(models["smollm2"], load_if_cold=True) as lease:
        request = EngineRequest("long", prompt=PROMPT, max_tokens=10_000)
        stream = lease.engine.generate(request)
        await anext(stream)
        await anext(stream)  # decoding now
        with pytest.raises(ResourceExhausted) as err:
            await complete(manager, models["gemma"])
        assert err.value.reason == "MEMORY_BUDGET_BUSY"
        assert int(err.value.metadata["needed_bytes"]) > 0
        smollm2 = manager.get(model_key("smollm2", "1"))
        assert smollm2 is not None and smollm2.state is ResidencyState.WARM
        assert isinstance(await anext(stream), Piece)  # still streaming
        await stream.aclose()
    await asyncio.wait_for(complete(manager, models["gemma"]), 60)  # now it may swap
    await manager.close()


def test_references_differ(references: dict[str, str]) -> None:
    # Guards the swap test: the two models must be told apart by their answers.
    assert references["smollm2"] != references["gemma"]


async def test_cached_prefixes_make_room_before_any_model_goes_and_grow_back(
    settings: WorkerSettings, models: dict[str, model_pb2.Model], gemma_gguf: Path
) -> None:
    """SmolLM2 busy with a stream, Gemma needing room: SmolLM2's cached prefixes give up
    their reserve (half of it is enough here) instead of Gemma being refused; the stream
    goes on; once Gemma is gone the reserve grows back."""
    manager = build_manager(settings.model_copy(update={"prefix_cache_share": 2.0}))
    smollm2_key = model_key("smollm2", "1")
    count = ", ".join(str(n) for n in range(90))
    async with manager.acquire(models["smollm2"], load_if_cold=True) as lease:
        for word in ("Numbers", "Counting"):  # two cached prefixes of ~440 tokens
            request = EngineRequest(word, prompt=f"{word}: {count}", max_tokens=4)
            await drain(lease.engine.generate(request))
    smollm2 = manager.get(smollm2_key)
    assert smollm2 is not None and smollm2.prefix is not None
    full = smollm2.prefix.tokens
    assert full == 2 * CONTEXT and smollm2.prefix.bytes > 10 * MiB
    assert lease.engine.prefix_summary().cached_tokens > full // 2  # type: ignore[attr-defined]
    gemma_needs = await manager.loader.needed_bytes(models["gemma"], gemma_gguf)
    manager.budget_bytes = smollm2.memory_bytes + gemma_needs.total - smollm2.prefix.bytes // 2

    async with manager.acquire(models["smollm2"]) as lease:
        stream = lease.engine.generate(EngineRequest("long", prompt=PROMPT, max_tokens=10_000))
        await anext(stream)
        await anext(stream)  # decoding now: SmolLM2 cannot be evicted
        await asyncio.wait_for(complete(manager, models["gemma"]), 60)
        assert smollm2.state is ResidencyState.WARM and manager.evictions_total == 0
        assert full // 2 - 1 <= smollm2.prefix.tokens <= full // 2
        summary = lease.engine.prefix_summary()  # type: ignore[attr-defined]
        assert summary.cached_tokens_limit == smollm2.prefix.tokens
        assert 0 < summary.cached_tokens <= smollm2.prefix.tokens  # the older one went
        assert manager.used_bytes <= manager.budget_bytes
        assert isinstance(await anext(stream), Piece)  # still streaming
        await stream.aclose()

    version = manager.notifier.version
    await manager.unload(model_key("gemma", "1"))
    async with asyncio.timeout(10):
        while smollm2.prefix.tokens < full:
            version = await manager.notifier.wait(version, 10)
    assert manager.used_bytes <= manager.budget_bytes
    assert lease.engine.prefix_summary().cached_tokens_limit == full  # type: ignore[attr-defined]
    await manager.close()
