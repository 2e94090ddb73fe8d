"""The worker bench's bare side: llama-cpp-python on the same SmolLM2 file, no worker.

`Llama`'s own streaming for one stream and its cold load, and `BareBatch`, llama.cpp's
low-level API batching N prompts itself. All of it runs on one thread (`on_bare`):
libgomp keeps an OpenMP team for every thread that ever computed, and once the teams
hold more threads than there are CPUs its barriers sleep instead of spinning
(worker/engines/llama_compute.py). Bare decode called from the loop's thread after a
pool thread had run the bare batch fell from ~90 to ~60 tokens/s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy

from bench.repeats import COUNTING
from modelyard.bundled import smollm2_path

CONTEXT = 2048
BARE_BATCH_TOKENS = 512  # the worker's batch size (ModelSpec.batch_size)
T = TypeVar("T")
_BARE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-llama")


async def on_bare(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on the bare side's one thread."""
    return await asyncio.get_running_loop().run_in_executor(_BARE_THREAD, fn, *args)


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
