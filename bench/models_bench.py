"""Two models in one worker (llama.cpp): does a second model, loaded and idle, slow the
first one's decode?

    .venv/bin/python -m bench.models_bench [--repeats 5] [--tokens 128] [--threads N]

One worker process (`modelyard worker serve`) with SmolLM2 twice in its catalogue, under
two names (two engines, two contexts). Each repetition streams one greedy counting
prompt from model A with B unloaded, then with B loaded and idle, then with B unloaded
again (averaging the two alone runs), and reports A's decode tok/s with B over alone:
min / median / max. With a decode thread per model, libgomp's OpenMP teams outnumbered
the CPUs and its barriers slept: 19-50 against 75-85 tok/s (worker/engines/llama_compute.py
says why every model now computes on one thread). Writes bench/results/models.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

from bench.bare_llama import CONTEXT
from bench.repeats import COUNTING, spread
from bench.report import machine, publish
from bench.worker_bench import grpc_stream, worker_process
from modelyard.bundled import smollm2_model
from modelyard.v1 import model_pb2, worker_pb2

RESULTS = Path(__file__).parent / "results" / "models.md"


def models() -> tuple[model_pb2.Model, model_pb2.Model]:
    first = smollm2_model()
    first.load_options.context_length = CONTEXT
    second = model_pb2.Model()
    second.CopyFrom(first)
    second.name = f"{first.name}-b"
    return first, second


async def measure(repeats: int, tokens: int, threads: int, tmp: Path) -> list[tuple[float, float]]:
    """(A's tok/s alone, with B loaded) per repetition."""
    first, second = models()
    async with worker_process(first, threads, 0.0, tmp, also=[second]) as stub:
        await grpc_stream(stub, first, 4, COUNTING)

        async def rate() -> float:
            return (await grpc_stream(stub, first, tokens, COUNTING))[1]

        rows = []
        for _ in range(repeats):
            alone = [await rate()]
            await stub.LoadModel(worker_pb2.LoadModelRequest(model=second), timeout=120)
            await grpc_stream(stub, second, 4, COUNTING)  # B has computed, then idles
            loaded = await rate()
            await stub.UnloadModel(
                worker_pb2.UnloadModelRequest(name=second.name, version=second.version)
            )
            alone.append(await rate())
            rows.append((statistics.fmean(alone), loaded))
        return rows


def report(rows: list[tuple[float, float]], tokens: int, threads: int) -> str:
    alone, loaded = [a for a, _ in rows], [b for _, b in rows]
    return "\n".join(
        [
            "# Two models in one worker (llama.cpp)",
            "",
            f"{machine()}; llama.cpp threads {threads}; SmolLM2-135M Q4_1 loaded twice under "
            f"two names; one greedy stream of {tokens} tokens of a counting prompt from model "
            f"A; {len(rows)} repetitions (alone, with B loaded and idle, alone again).",
            "",
            "| A's decode tok/s | alone | B loaded, idle | with B / alone |",
            "|---|---:|---:|---:|",
            f"| min / median / max | {spread(alone, '{:.1f}')} | {spread(loaded, '{:.1f}')} "
            f"| {spread([b / a for a, b in rows], '{:.2f}')} |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(measure(args.repeats, args.tokens, args.threads, Path(tmp)))
    publish(RESULTS, report(rows, args.tokens, args.threads))


if __name__ == "__main__":
    main()
