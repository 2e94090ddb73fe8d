"""token_delay_ms makes a worker slower than its hardware (heterogeneous pools in tests)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from worker.config import WorkerSettings
from worker.counters import SequenceCounters
from worker.engines.base import EngineRequest, Finished, ModelSpec, Piece, SamplingConfig
from worker.engines.llama_cpp import LlamaCppEngine

DELAY_S = 0.05


async def test_every_decode_step_waits_the_configured_delay(tiny_gguf: Path) -> None:
    engine = LlamaCppEngine(SequenceCounters())
    await engine.load(
        ModelSpec("tiny@1", tiny_gguf, context_length=256, threads=1, token_delay_s=DELAY_S)
    )
    try:
        started = time.monotonic()
        events = [
            e
            async for e in engine.generate(
                EngineRequest("slow", prompt="hi", sampling=SamplingConfig(seed=1), max_tokens=8)
            )
        ]
        elapsed = time.monotonic() - started
    finally:
        await engine.unload()
    tokens = sum(len(e.token_ids) for e in events if isinstance(e, Piece))
    assert isinstance(events[-1], Finished)
    # A lower bound only: a pause after every step that leaves a sequence running,
    # i.e. after each token but the last.
    assert tokens > 1
    assert elapsed >= (tokens - 1) * DELAY_S


def test_the_delay_is_off_by_default_and_set_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert WorkerSettings().token_delay_ms == 0
    monkeypatch.setenv("MODELYARD_WORKER_TOKEN_DELAY_MS", "40")
    assert WorkerSettings().token_delay_ms == 40
