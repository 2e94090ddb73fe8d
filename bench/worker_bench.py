"""Worker bench (llama.cpp): what the worker adds over bare llama-cpp-python, and batching.

    .venv/bin/python -m bench.worker_bench [--repeats 5] [--tokens 128] [--threads N]
        [--stream-interval-ms 50] [--in-process]

One worker serving SmolLM2 over gRPC, as its own process (`modelyard worker serve`, as
deployed: its event loop and GIL serve only its side of the stream; `--in-process` runs
it in the bench's process, sharing the client's loop and GIL), and llama-cpp-python's
own `Llama` on the same file in the bench's process. Each repetition measures, in turn
(so a busy spell of the shared machine hits both sides of a ratio alike):

- decode tok/s after the first token, one greedy stream of `--tokens` tokens of a counting
  prompt (it cannot stop early): the worker over gRPC vs `Llama.create_completion(stream=True)`,
  and a second worker with `stream_interval_ms` (tokens after the first joined per interval:
  a message and a loop wake per interval instead of per token; 0 leaves it out);
- cold load to first token: bare `Llama()` + its first token, vs the worker after
  UnloadModel: one Generate with load_if_cold to its first token (fetch and verify,
  budget, engine load, admission, first token);
- aggregate tok/s through the worker at 1 and 8 concurrent streams (counting prompts no
  earlier request used, so no stream starts from a cached prefix): continuous batching;
  and the streams' median and last TTFT against bare llama.cpp's prefill of the same 8
  prompts in one batch (one `llama_decode` of 8 sequences): on CPU prefill is
  compute-bound, so that batch is the soonest the 8th stream can start, and 8 requests
  admitted together start within it, not one whole generation after another.

Reports min / median / max of each ratio over the repetitions; a single run on a shared
machine is not evidence. Writes bench/results/worker.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from bench.bare_llama import CONTEXT, BareBatch, bare_cold, bare_stream, on_bare, open_llama
from bench.repeats import COUNTING, counting_prompt, spread
from bench.report import machine, publish
from modelyard.bundled import smollm2_model
from modelyard.local_mesh import free_port, spawn_service
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from tests.worker_stub import serving
from worker.artifacts.settings import ArtifactSettings
from worker.catalogue import FileCatalogue
from worker.config import WorkerSettings

RESULTS = Path(__file__).parent / "results" / "worker.md"
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
    last_ttft: float = 0.0  # the 8 streams' last first token, s
    bare_prefill: float = 0.0  # bare batching: the same 8 prompts' first tokens, s
    bare_aggregate: float = 0.0  # bare batching: the same 8 streams' tok/s
    short: int = 0  # streams that produced fewer tokens than asked (should stay 0)


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
    stub: worker_pb2_grpc.WorkerServiceStub,
    model: model_pb2.Model,
    prompts: list[str],
    tokens: int,
) -> tuple[float, list[float], int]:
    """(aggregate tok/s, each stream's TTFT in s, streams that stopped short)."""
    start = time.perf_counter()
    results = await asyncio.gather(*(grpc_stream(stub, model, tokens, p) for p in prompts))
    rate = sum(n for _, _, n in results) / (time.perf_counter() - start)
    return rate, [t for t, _, _ in results], sum(1 for _, _, n in results if n < tokens)


async def worker_cold(stub: worker_pb2_grpc.WorkerServiceStub, model: model_pb2.Model) -> float:
    await stub.UnloadModel(worker_pb2.UnloadModelRequest(name=model.name, version=model.version))
    ttft, _, _ = await grpc_stream(stub, model, 1, COUNTING)
    return ttft


Side = Callable[[], Awaitable[tuple[float, float, int]]]


async def decode_round(rep: Repetition, sides: dict[str, Side], tokens: int) -> None:
    """One stream per side in the order A B C C B A, averaged: a machine slowing down or
    speeding up during the round weighs on every side alike."""
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for name in [*sides, *reversed(sides)]:
        _, rate, n = await sides[name]()
        rates[name].append(rate)
        rep.short += n < tokens
    rep.bare_decode = statistics.fmean(rates["bare"])
    rep.worker_decode = statistics.fmean(rates["worker"])
    rep.paced_decode = statistics.fmean(rates.get("paced", [0.0]))


async def batching_round(
    rep: Repetition,
    stub: worker_pb2_grpc.WorkerServiceStub,
    model: model_pb2.Model,
    bare_batch: BareBatch,
    tokens: int,
    base: int,
) -> None:
    """8 streams: bare batching and the worker in the order A B B A, each pair on the
    same prompts (`base` on: none an earlier request used), averaged."""
    n = STREAMS[-1]
    halves = [[counting_prompt(base + 10 + 20 * h + i) for i in range(n)] for h in (0, 1)]
    bare_runs = [await on_bare(bare_batch.run, halves[0], tokens)]
    worker_runs = []
    for prompts in halves:
        rate, ttfts, short = await aggregate(stub, model, prompts, tokens)
        worker_runs.append((rate, statistics.median(ttfts), max(ttfts)))
        rep.short += short
    bare_runs.append(await on_bare(bare_batch.run, halves[1], tokens))
    rep.aggregate[n] = statistics.fmean(r[0] for r in worker_runs)
    rep.ttft[n] = statistics.fmean(r[1] for r in worker_runs)
    rep.last_ttft = statistics.fmean(r[2] for r in worker_runs)
    rep.bare_prefill = statistics.fmean(first for first, _ in bare_runs)
    rep.bare_aggregate = statistics.fmean(rate for _, rate in bare_runs)


async def repetition(
    stub: worker_pb2_grpc.WorkerServiceStub,
    paced: worker_pb2_grpc.WorkerServiceStub | None,
    model: model_pb2.Model,
    llama: Any,
    bare_batch: BareBatch,
    tokens: int,
    threads: int,
    index: int,
) -> Repetition:
    rep = Repetition()

    async def bare() -> tuple[float, float, int]:
        return await on_bare(bare_stream, llama, tokens)

    async def worker() -> tuple[float, float, int]:
        return await grpc_stream(stub, model, tokens, COUNTING)

    async def paced_worker() -> tuple[float, float, int]:
        assert paced is not None
        return await grpc_stream(paced, model, tokens, COUNTING)

    sides: dict[str, Side] = {"bare": bare, "worker": worker}
    if paced is not None:
        sides["paced"] = paced_worker
    await decode_round(rep, sides, tokens)
    rep.bare_cold = await on_bare(bare_cold, threads)
    rep.worker_cold = await worker_cold(stub, model)
    # Prompts no earlier request used: a cached prefix would shorten the prefill.
    base = 1000 + 100 * index
    rep.aggregate[1], ttfts, short = await aggregate(stub, model, [counting_prompt(base)], tokens)
    rep.ttft[1], rep.short = ttfts[0], rep.short + short
    await batching_round(rep, stub, model, bare_batch, tokens, base)
    return rep


@contextlib.asynccontextmanager
async def in_process_worker(
    model: model_pb2.Model, threads: int, interval_ms: float, cache: Path
) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    settings = WorkerSettings(
        address="127.0.0.1:0",
        threads=threads,
        context_length=CONTEXT,
        stream_interval_ms=interval_ms,
        artifacts=ArtifactSettings(cache_dir=cache),
    )
    async with serving(settings, FileCatalogue([model]), [model]) as stub:
        yield stub


@contextlib.asynccontextmanager
async def worker_process(
    model: model_pb2.Model,
    threads: int,
    interval_ms: float,
    cache: Path,
    also: Sequence[model_pb2.Model] = (),
) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    """`modelyard worker serve` with the model warm; `also` in its catalogue file, cold."""
    name = f"worker-{interval_ms:g}"
    catalog = cache / f"{name}.json"
    catalog.write_text(json.dumps([json_format.MessageToDict(m) for m in (model, *also)]))
    address = f"127.0.0.1:{free_port()}"
    args = ["worker", "serve", "--address", address, "--threads", str(threads)]
    args += ["--context-length", str(CONTEXT), "--catalog-file", str(catalog)]
    env = {
        "MODELYARD_WORKER_ARTIFACTS_CACHE_DIR": str(cache / name),
        "MODELYARD_WORKER_STREAM_INTERVAL_MS": f"{interval_ms:g}",
    }
    service = spawn_service(name, args, address, cache / f"{name}.log", env)
    try:
        await asyncio.to_thread(service.wait_healthy, 120)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = worker_pb2_grpc.WorkerServiceStub(channel)
            await stub.LoadModel(worker_pb2.LoadModelRequest(model=model), timeout=120)
            yield stub
    finally:
        service.stop()


async def run(
    repeats: int, tokens: int, threads: int, interval_ms: float, in_process: bool
) -> list[Repetition]:
    model = smollm2_model()
    model.load_options.context_length = CONTEXT
    start_worker = in_process_worker if in_process else worker_process
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            stub = await stack.enter_async_context(start_worker(model, threads, 0.0, cache))
            paced = None
            if interval_ms > 0:
                paced = await stack.enter_async_context(
                    start_worker(model, threads, interval_ms, cache)
                )
            for warm in (stub, paced):  # the first request's path, once
                if warm is not None:
                    await grpc_stream(warm, model, 4, COUNTING)
            llama = await on_bare(open_llama, threads)
            stack.callback(llama.close)
            await on_bare(bare_stream, llama, 4)
            bare_batch = await on_bare(BareBatch, llama, STREAMS[-1], threads)
            stack.callback(bare_batch.close)
            return [
                await repetition(stub, paced, model, llama, bare_batch, tokens, threads, i)
                for i in range(repeats)
            ]


def report(
    reps: list[Repetition], tokens: int, threads: int, interval_ms: float, in_process: bool
) -> str:
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
    bare = each(lambda r: r.bare_prefill * 1000)
    batched = each(lambda r: r.aggregate[8] / r.bare_aggregate)
    return "\n".join(
        [
            "# Worker bench (llama.cpp)",
            "",
            f"{machine()}; llama.cpp threads {threads}; the worker "
            f"{'in the bench process' if in_process else 'a process of its own'}; "
            f"SmolLM2-135M Q4_1, context {CONTEXT}, "
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
            "| 8 streams at once | worker | bare llama.cpp batching them | worker / bare |",
            "|---|---:|---:|---:|",
            f"| aggregate tok/s | {spread(each(lambda r: r.aggregate[8]), '{:.1f}')} "
            f"| {spread(each(lambda r: r.bare_aggregate), '{:.1f}')} | {spread(batched)} |",
            "| first token, median stream, ms "
            f"| {spread(each(lambda r: r.ttft[8] * 1000), '{:.0f}')} "
            f"| {spread(bare, '{:.0f}')} "
            f"| {spread(each(lambda r: r.ttft[8] / r.bare_prefill))} |",
            "| first token, last stream, ms "
            f"| {spread(each(lambda r: r.last_ttft * 1000), '{:.0f}')} "
            f"| {spread(bare, '{:.0f}')} "
            f"| {spread(each(lambda r: r.last_ttft / r.bare_prefill))} |",
            "",
            "Bare batching: llama.cpp's low-level API prefills the 8 prompts as 8 sequences "
            "of one `llama_decode` (the soonest it gives all 8 a first token), then decodes "
            "one token of each per step, greedy. One whole "
            f"{tokens}-token generation at 1 stream takes "
            f"{spread([w * 1000 for w in whole], '{:.0f}')} ms: admission one request "
            "after another would start the last stream that late.",
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
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="Serve the worker in the bench's process (shares the client's loop and GIL).",
    )
    args = parser.parse_args()
    interval, in_process = args.stream_interval_ms, args.in_process
    reps = asyncio.run(run(args.repeats, args.tokens, args.threads, interval, in_process))
    # Another thread count than the default (all cores), or the worker in process, is a
    # comparison of its own.
    path = RESULTS
    if args.threads != (os.cpu_count() or 1):
        path = path.with_name(f"worker-threads{args.threads}.md")
    if in_process:
        path = path.with_name(path.stem + "-in-process.md")
    publish(path, report(reps, args.tokens, args.threads, interval, in_process))


if __name__ == "__main__":
    cli()
