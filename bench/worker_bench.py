"""Worker bench (llama.cpp): what the worker adds over bare llama-cpp-python, and batching.

    .venv/bin/python -m bench.worker_bench [--repeats 5] [--tokens 128] [--threads N]
        [--stream-interval-ms 50]

One worker in process serving SmolLM2 over gRPC, and llama-cpp-python's own `Llama` on the
same file. Each repetition measures, in turn (so a busy spell of the shared machine hits
both sides of a ratio alike):

- decode tok/s after the first token, one greedy stream of `--tokens` tokens of a counting
  prompt (it cannot stop early): the worker over gRPC vs `Llama.create_completion(stream=True)`,
  and a second worker with `stream_interval_ms` (tokens after the first joined per interval:
  a message and a loop wake per interval instead of per token; 0 leaves it out);
- cold load to first token: bare `Llama()` + its first token, vs the worker after
  UnloadModel: one Generate with load_if_cold to its first token (fetch and verify,
  budget, engine load, admission, first token);
- aggregate tok/s through the worker at 1 and 8 concurrent streams (distinct counting
  prompts): continuous batching; and the streams' median TTFT, beside one whole
  generation's time (8 admitted together start within a prefill or so of each other).

Reports min / median / max of each ratio over the repetitions; a single run on a shared
machine is not evidence. Writes bench/results/worker.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.repeats import COUNTING, counting_prompt, spread
from bench.report import machine, publish
from modelyard.bundled import smollm2_model, smollm2_path
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from tests.worker_stub import serving
from worker.artifacts.settings import ArtifactSettings
from worker.catalogue import FileCatalogue
from worker.config import WorkerSettings

RESULTS = Path(__file__).parent / "results" / "worker.md"
CONTEXT = 2048
STREAMS = (1, 8)


@dataclass
class Repetition:
    bare_decode: float = 0.0
    worker_decode: float = 0.0
    paced_decode: float = 0.0
    bare_cold: float = 0.0
    worker_cold: float = 0.0
    aggregate: dict[int, float] = field(default_factory=dict)
    ttft: dict[int, float] = field(default_factory=dict)  # median over the streams, s
    short: int = 0  # streams that produced fewer tokens than asked (should stay 0)


def open_llama(threads: int) -> Any:
    """Bare `Llama` with the worker's threads for both phases (its batch default: all cores)."""
    from llama_cpp import Llama

    return Llama(
        str(smollm2_path()),
        n_ctx=CONTEXT,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


def bare_stream(llama: Any, tokens: int) -> tuple[float, float, int]:
    """(seconds to first token, decode tokens/s after it, tokens) with Llama's own streaming."""
    start = time.perf_counter()
    first = last = 0.0
    n = 0
    for _ in llama.create_completion(COUNTING, max_tokens=tokens, temperature=0, stream=True):
        last = time.perf_counter()
        first = first or last
        n += 1
    return first - start, (n - 1) / (last - first) if n > 1 else 0.0, n


def bare_cold(threads: int) -> float:
    started = time.perf_counter()
    llama = open_llama(threads)
    bare_stream(llama, 1)
    seconds = time.perf_counter() - started
    llama.close()
    return seconds


async def grpc_stream(
    stub: worker_pb2_grpc.WorkerServiceStub, model: model_pb2.Model, tokens: int, prompt: str
) -> tuple[float, float, int]:
    request = worker_pb2.WorkerServiceGenerateRequest(
        model=model,
        prompt=prompt,
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
) -> tuple[float, float, int]:
    """(aggregate tok/s, median TTFT in s, streams that stopped short)."""
    start = time.perf_counter()
    results = await asyncio.gather(
        *(grpc_stream(stub, model, tokens, counting_prompt(i)) for i in range(streams))
    )
    rate = sum(n for _, _, n in results) / (time.perf_counter() - start)
    ttft = statistics.median(t for t, _, _ in results)
    return rate, ttft, sum(1 for _, _, n in results if n < tokens)


async def worker_cold(stub: worker_pb2_grpc.WorkerServiceStub, model: model_pb2.Model) -> float:
    await stub.UnloadModel(worker_pb2.UnloadModelRequest(name=model.name, version=model.version))
    ttft, _, _ = await grpc_stream(stub, model, 1, COUNTING)
    return ttft


async def repetition(
    stub: worker_pb2_grpc.WorkerServiceStub,
    paced: worker_pb2_grpc.WorkerServiceStub | None,
    model: model_pb2.Model,
    llama: Any,
    tokens: int,
    threads: int,
) -> Repetition:
    rep = Repetition()
    _, rep.bare_decode, n_bare = bare_stream(llama, tokens)
    _, rep.worker_decode, n_worker = await grpc_stream(stub, model, tokens, COUNTING)
    rep.short += (n_bare < tokens) + (n_worker < tokens)
    if paced is not None:
        _, rep.paced_decode, n_paced = await grpc_stream(paced, model, tokens, COUNTING)
        rep.short += n_paced < tokens
    rep.bare_cold = await asyncio.to_thread(bare_cold, threads)
    rep.worker_cold = await worker_cold(stub, model)
    for n in STREAMS:
        rep.aggregate[n], rep.ttft[n], short = await aggregate(stub, model, n, tokens)
        rep.short += short
    return rep


async def run(repeats: int, tokens: int, threads: int, interval_ms: float) -> list[Repetition]:
    model = smollm2_model()
    model.load_options.context_length = CONTEXT
    with tempfile.TemporaryDirectory() as cache:
        settings = WorkerSettings(
            address="127.0.0.1:0",
            threads=threads,
            context_length=CONTEXT,
            artifacts=ArtifactSettings(cache_dir=Path(cache)),
        )
        async with contextlib.AsyncExitStack() as stack:
            catalogue = FileCatalogue([model])
            stub = await stack.enter_async_context(serving(settings, catalogue, [model]))
            paced = None
            if interval_ms > 0:
                settings = settings.model_copy(update={"stream_interval_ms": interval_ms})
                paced = await stack.enter_async_context(serving(settings, catalogue, [model]))
            for warm in (stub, paced):  # the first request's path, once
                if warm is not None:
                    await grpc_stream(warm, model, 4, COUNTING)
            llama = open_llama(threads)
            stack.callback(llama.close)
            bare_stream(llama, 4)
            return [
                await repetition(stub, paced, model, llama, tokens, threads) for _ in range(repeats)
            ]


def report(reps: list[Repetition], tokens: int, threads: int, interval_ms: float) -> str:
    def each(f: Any) -> list[float]:
        return [float(f(r)) for r in reps]

    decode = each(lambda r: r.worker_decode / r.bare_decode)
    paced = []
    if interval_ms > 0:
        paced = [
            f"| decode tok/s, one stream, worker with stream_interval_ms {interval_ms:g} | "
            f"{spread(each(lambda r: r.paced_decode), '{:.1f}')} | "
            f"{spread(each(lambda r: r.bare_decode), '{:.1f}')} | "
            f"{spread(each(lambda r: r.paced_decode / r.bare_decode), '{:.3f}')} |"
        ]
    cold = each(lambda r: r.worker_cold / r.bare_cold)
    gain = each(lambda r: r.aggregate[8] / r.aggregate[1])
    ttft = each(lambda r: r.ttft[8] / r.ttft[1])
    # What admission one request at a time would cost the 8th stream: a whole generation.
    whole = each(lambda r: tokens / r.aggregate[1])
    return "\n".join(
        [
            "# Worker bench (llama.cpp)",
            "",
            f"{machine()}; llama.cpp threads {threads}; SmolLM2-135M Q4_1, context {CONTEXT}, "
            f"greedy, {tokens} tokens of counting prompts; {len(reps)} interleaved "
            f"repetitions; streams that stopped short: {sum(r.short for r in reps)}.",
            "",
            "| measure | worker | bare llama-cpp-python | ratio worker / bare |",
            "|---|---:|---:|---:|",
            f"| decode tok/s, one stream (gRPC vs in process) | "
            f"{spread(each(lambda r: r.worker_decode), '{:.1f}')} | "
            f"{spread(each(lambda r: r.bare_decode), '{:.1f}')} | {spread(decode, '{:.3f}')} |",
            *paced,
            f"| cold load to first token, s (unload + request vs `Llama()` + token) | "
            f"{spread(each(lambda r: r.worker_cold), '{:.3f}')} | "
            f"{spread(each(lambda r: r.bare_cold), '{:.3f}')} | {spread(cold)} |",
            "",
            "| concurrent streams through the worker | aggregate tok/s | vs 1 stream "
            "| TTFT p50 ms | vs 1 stream |",
            "|---|---:|---:|---:|---:|",
            f"| 1 | {spread(each(lambda r: r.aggregate[1]), '{:.1f}')} | 1.00 "
            f"| {spread(each(lambda r: r.ttft[1] * 1000), '{:.0f}')} | 1.00 |",
            f"| 8 | {spread(each(lambda r: r.aggregate[8]), '{:.1f}')} | {spread(gain)} "
            f"| {spread(each(lambda r: r.ttft[8] * 1000), '{:.0f}')} | {spread(ttft)} |",
            "",
            f"One whole {tokens}-token generation at 1 stream takes "
            f"{spread([w * 1000 for w in whole], '{:.0f}')} ms: a TTFT at 8 streams well "
            "under it means the 8 were admitted together, not one after another.",
            "",
            "Each cell: min / median / max over the repetitions.",
            "",
        ]
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stream-interval-ms", type=float, default=50.0)
    args = parser.parse_args()
    interval = args.stream_interval_ms
    reps = asyncio.run(run(args.repeats, args.tokens, args.threads, interval))
    # Another thread count than the default (all cores) is a comparison of its own.
    default = args.threads == (os.cpu_count() or 1)
    path = RESULTS if default else RESULTS.with_name(f"worker-threads{args.threads}.md")
    publish(path, report(reps, args.tokens, args.threads, interval))


if __name__ == "__main__":
    cli()
