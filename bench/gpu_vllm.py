"""vLLM smoke test on a checkpoint directory, run by `bench.gpu_check` in a child process.

    python -m bench.gpu_vllm <checkpoint-dir>

modelyard's VllmEngine loads the checkpoint (the tiny model of `bench.gpu_tiny`), streams
one greedy generation and cancels a second one; prints one JSON line with the result and
exits 0 when both behaved. A child process: vLLM spawns its engine processes and must own
its event loop, and its CUDA state must not meet the parent's.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from worker.engines.base import EngineRequest, Finished, ModelSpec, Piece, SamplingConfig

TOKENS = 32


async def _generate(engine: Any, request_id: str, tokens: int, stop_after: int = 0) -> int:
    """Token ids streamed; with `stop_after`, the stream is closed (cancelled) after that many."""
    ids = 0
    req = EngineRequest(
        request_id,
        prompt="Count from one to ten:",
        sampling=SamplingConfig(temperature=0.0),
        max_tokens=tokens,
    )
    gen = engine.generate(req)
    try:
        async for event in gen:
            if isinstance(event, Piece):
                ids += len(event.token_ids)
                if stop_after and ids >= stop_after:
                    break
            elif isinstance(event, Finished) and event.output_tokens != ids:
                raise AssertionError(f"usage {event.output_tokens} != streamed {ids}")
    finally:
        await gen.aclose()
    return ids


async def smoke(checkpoint: Path) -> dict[str, Any]:
    from worker.engines.vllm import VllmEngine

    engine = VllmEngine()
    started = time.perf_counter()
    info = await engine.load(
        ModelSpec(
            key="tiny-llama@vllm",
            path=checkpoint,
            context_length=512,
            threads=1,
            extra={"gpu_memory_utilization": "0.2"},
        )
    )
    out: dict[str, Any] = {"load_s": round(time.perf_counter() - started, 1)}
    try:
        out["max_sequences"] = info.max_sequences
        t0 = time.perf_counter()
        out["streamed"] = await _generate(engine, "smoke", TOKENS)
        out["tok_s"] = round(out["streamed"] / (time.perf_counter() - t0), 1)
        out["cancelled_after"] = await _generate(engine, "cancel", 400, stop_after=4)
        await asyncio.sleep(0.5)
        out["running_after_cancel"] = engine.stats().running_sequences
    finally:
        await engine.unload()
    out["ok"] = out["streamed"] == TOKENS and out["running_after_cancel"] == 0
    return out


def main() -> None:
    result = asyncio.run(smoke(Path(sys.argv[1])))
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
