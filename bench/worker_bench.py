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
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy

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
BARE_BATCH_TOKENS = 512  # the worker's batch size (ModelSpec.batch_size)


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


class BareBatch:
    """Bare llama.cpp batching N prompts itself (its low-level API, no worker): one
    `llama_decode` of every prompt as its own sequence, then one step per token holding
    each sequence's next token, greedy. Its first tokens come as soon as one batched
    prefill allows, and its tok/s is what the engine gives N streams."""

    def __init__(self, llama: Any, sequences: int, threads: int) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaBatch, LlamaContext

        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch = CONTEXT, BARE_BATCH_TOKENS
        params.n_ubatch, params.n_seq_max = BARE_BATCH_TOKENS, sequences
        params.n_threads = params.n_threads_batch = threads
        # As the worker's default: one KV cache all sequences share. llama.cpp's own
        # default splits it into a stream per sequence (the worker's kv_unified "0"),
        # where each token attends over its own sequence's cells only: on 8 x 180-token
        # streams that gave 123 tok/s against 103 unified (medians of 7, EPYC), a
        # difference of layout, not of the worker.
        params.kv_unified = True
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as the worker
        self._llama_cpp, self._llama = llama_cpp, llama
        self._n_vocab = int(llama.n_vocab())
        self._ctx: Any = LlamaContext(model=llama._model, params=params, verbose=False)
        self._batch: Any = LlamaBatch(
            n_tokens=BARE_BATCH_TOKENS, embd=0, n_seq_max=1, verbose=False
        )

    def run(self, prompts: list[str], tokens: int) -> tuple[float, float]:
        """(seconds to every stream's first token, aggregate tok/s over the whole run)."""
        lib, ctx, batch = self._llama_cpp, self._ctx, self._batch
        encoded = [self._llama.tokenize(p.encode()) for p in prompts]
        if sum(map(len, encoded)) > BARE_BATCH_TOKENS:  # the batch's arrays are that long
            raise ValueError(f"the prompts exceed one batch of {BARE_BATCH_TOKENS} tokens")
        lib.llama_memory_clear(lib.llama_get_memory(ctx.ctx), True)
        batch.reset()
        start = time.perf_counter()
        rows = []
        for seq_id, prompt in enumerate(encoded):
            batch.add_sequence(prompt, seq_id, logits_all=False)
            rows.append(batch.batch.n_tokens - 1)
        ctx.decode(batch)
        nexts = [self._greedy(row) for row in rows]
        first = time.perf_counter() - start
        n_past = [len(p) for p in encoded]
        b = batch.batch
        for _ in range(tokens - 1):
            b.n_tokens = len(nexts)
            for seq_id, token in enumerate(nexts):
                b.token[seq_id], b.pos[seq_id] = token, n_past[seq_id]
                b.n_seq_id[seq_id], b.seq_id[seq_id][0], b.logits[seq_id] = 1, seq_id, True
                n_past[seq_id] += 1
            ctx.decode(batch)
            nexts = [self._greedy(row) for row in range(len(nexts))]
        return first, len(prompts) * tokens / (time.perf_counter() - start)

    def _greedy(self, row: int) -> int:
        logits = self._llama_cpp.llama_get_logits_ith(self._ctx.ctx, row)
        return int(numpy.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()


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
    bare_runs = [await asyncio.to_thread(bare_batch.run, halves[0], tokens)]
    worker_runs = []
    for prompts in halves:
        rate, ttfts, short = await aggregate(stub, model, prompts, tokens)
        worker_runs.append((rate, statistics.median(ttfts), max(ttfts)))
        rep.short += short
    bare_runs.append(await asyncio.to_thread(bare_batch.run, halves[1], tokens))
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
        return bare_stream(llama, tokens)

    async def worker() -> tuple[float, float, int]:
        return await grpc_stream(stub, model, tokens, COUNTING)

    async def paced_worker() -> tuple[float, float, int]:
        assert paced is not None
        return await grpc_stream(paced, model, tokens, COUNTING)

    sides: dict[str, Side] = {"bare": bare, "worker": worker}
    if paced is not None:
        sides["paced"] = paced_worker
    await decode_round(rep, sides, tokens)
    rep.bare_cold = await asyncio.to_thread(bare_cold, threads)
    rep.worker_cold = await worker_cold(stub, model)
    # Prompts no earlier request used: a cached prefix would shorten the prefill.
    base = 1000 + 100 * index
    rep.aggregate[1], ttfts, short = await aggregate(stub, model, [counting_prompt(base)], tokens)
    rep.ttft[1], rep.short = ttfts[0], rep.short + short
    await batching_round(rep, stub, model, bare_batch, tokens, base)
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
            bare_batch = BareBatch(llama, STREAMS[-1], threads)
            stack.callback(bare_batch.close)
            return [
                await repetition(stub, paced, model, llama, bare_batch, tokens, threads, i)
                for i in range(repeats)
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
    bare = each(lambda r: r.bare_prefill * 1000)
    batched = each(lambda r: r.aggregate[8] / r.bare_aggregate)
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
    args = parser.parse_args()
    interval = args.stream_interval_ms
    reps = asyncio.run(run(args.repeats, args.tokens, args.threads, interval))
    # Another thread count than the default (all cores) is a comparison of its own.
    default = args.threads == (os.cpu_count() or 1)
    path = RESULTS if default else RESULTS.with_name(f"worker-threads{args.threads}.md")
    publish(path, report(reps, args.tokens, args.threads, interval))


if __name__ == "__main__":
    cli()
