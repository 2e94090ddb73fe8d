"""llama.cpp through llama-cpp-python: GGUF models on CPU (or Metal/CUDA builds).

One context per model with `max_parallel_sequences` sequences (default
`DEFAULT_SEQUENCES`) and a unified KV cache: the context's cells are one pool, not
split per sequence, so any one request may use the whole context, and each running
request reserves prompt + max_tokens cells of it (requests that do not fit wait in the
engine for cells); `llama_batch.BatchDecoder` owns it on its own thread and batches every
running request into each forward pass (continuous batching). The model is
loaded with llama-cpp-python's thin wrappers of the C API (`LlamaModel`,
`LlamaContext`) because the high-level `Llama` opens a one-sequence context.

Tokens reach the event loop through an `EventChannel` sized to the request's
max_tokens, so a slow consumer never stalls the other sequences (paced by the
worker's stream interval when one is set).
Closing the consumer's stream (or `abort`) sets the job's cancel flag, which the
loop checks before every step: an abandoned request costs at most one more step.

Finished sequences' KV is kept in host memory as cached prefixes (`llama_prefix`),
at most `prefix_cache_share` x the context in tokens (the worker's memory estimate
counts it); unloading frees them with the context.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from modelyard.engine_options import unreadable_values
from modelyard.errors import FieldViolation, InvalidArgument
from modelyard.v1 import common_pb2
from worker.counters import CounterSnapshot, SequenceCounters
from worker.engines.base import (
    EmbedRequest,
    EmbedResult,
    EngineEvent,
    EngineRequest,
    LoadedInfo,
    ModelSpec,
)
from worker.engines.channel import EventChannel, engine_events
from worker.engines.chat_template import ChatTemplate
from worker.engines.common import EngineNotLoaded, check_logit_bias, check_prompt
from worker.engines.embed_common import embedding_only, not_embedding_model
from worker.engines.llama_batch import BatchDecoder
from worker.engines.llama_embed import LlamaEmbedder
from worker.engines.llama_grammar import GrammarCompiler, GrammarPlan
from worker.engines.llama_prefix import KvPrefixCache, prefix_cache_tokens
from worker.engines.llama_slots import Job
from worker.engines.prefix_summary import PrefixSummary

log = logging.getLogger(__name__)

ENGINE_NAME = "llama.cpp"
# Room in a job's channel beyond its tokens: Scheduled, a text tail, Finished.
CHANNEL_SLACK = 8
# Sequences decoded together unless the model's load options or the worker cap them:
# 16 short chat requests (~100 prompt + ~100 reply tokens) fit SmolLM2's 2,048 cells.
DEFAULT_SEQUENCES = 16


class LlamaCppEngine:
    name = ENGINE_NAME

    def __init__(self, counters: SequenceCounters | None = None) -> None:
        self._counters = counters if counters is not None else SequenceCounters()
        self._model: Any = None  # llama_cpp._internals.LlamaModel (untyped library)
        self._ctx: Any = None
        self._decoder: BatchDecoder | None = None
        self._template: ChatTemplate | None = None
        self._grammars: GrammarCompiler | None = None
        self._key = ""
        self._n_ctx = 0
        self._jobs: set[Job] = set()
        # An embedding model gets an embedding context instead of the decoder.
        self._embedder: LlamaEmbedder | None = None

    async def load(self, spec: ModelSpec) -> LoadedInfo:
        if self._decoder is not None or self._embedder is not None:
            raise RuntimeError(f"engine already holds {self._key}")
        if spec.embedding:
            self._embedder = await LlamaEmbedder.open(spec)
            self._key, self._n_ctx = spec.key, self._embedder.context_length
            return LoadedInfo(
                engine=ENGINE_NAME,
                context_length=self._n_ctx,
                vocab_size=self._embedder.vocab_size(),
                has_chat_template=False,
            )
        model, ctx = await asyncio.to_thread(_open, spec)
        n_ctx = int(ctx.n_ctx())
        # The longest one request may be: the whole context, or with a stream per
        # sequence (kv_unified=0) that stream's share.
        seq_cells = _seq_cells(ctx)
        self._decoder = BatchDecoder(
            model,
            ctx,
            n_ctx=n_ctx,
            n_batch=min(spec.batch_size, n_ctx),
            n_seq=live_sequences(spec),
            counters=self._counters,
            key=spec.key,
            step_delay_s=spec.token_delay_s,
            prefix=_prefix_cache(spec, ctx, n_ctx),
            seq_cells=seq_cells,
        )
        self._model, self._ctx, self._key, self._n_ctx = model, ctx, spec.key, seq_cells
        self._grammars = GrammarCompiler(model.vocab, int(model.n_vocab()))
        self._template = ChatTemplate.from_metadata(
            model.metadata(),
            bos_token=_token_text(model, model.token_bos()),
            eos_token=_token_text(model, model.token_eos()),
            model=spec.key,
        )
        return LoadedInfo(
            engine=ENGINE_NAME,
            context_length=seq_cells,
            vocab_size=int(model.n_vocab()),
            has_chat_template=not self._template.is_fallback,
            max_sequences=live_sequences(spec),
        )

    async def generate(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        decoder = self._decoder
        if self._embedder is not None:
            raise embedding_only(self._key)
        if decoder is None:
            raise EngineNotLoaded(ENGINE_NAME)
        prompt_tokens = self._prompt_tokens(req)
        check_prompt(prompt_tokens, self._n_ctx, self._key)
        check_logit_bias(req, int(self._model.n_vocab()))
        grammar: GrammarPlan | None = None
        if req.output_format is not None and self._grammars is not None:
            grammar = await asyncio.to_thread(self._grammars.compile, req.output_format)
        capacity = req.max_tokens + CHANNEL_SLACK
        channel: EventChannel[Any] = EventChannel(asyncio.get_running_loop(), capacity)
        job = Job(req, prompt_tokens, channel, grammar=grammar)
        self._jobs.add(job)
        try:
            decoder.submit(job)
            async for event in engine_events(job.channel, ENGINE_NAME, req.stream_interval_s):
                yield event
        finally:
            # First thing, synchronously: the decode loop drops the sequence next step.
            job.cancel.set()
            job.channel.close()
            self._jobs.discard(job)

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        if self._embedder is None:
            if self._decoder is None:
                raise EngineNotLoaded(ENGINE_NAME)
            raise not_embedding_model(self._key)
        return await self._embedder.embed(req)

    def abort(self, request_id: str) -> None:
        # Only sets flags: safe from gRPC done-callbacks while the stream is mid-await.
        for job in list(self._jobs):
            if job.request.request_id == request_id:
                job.cancel.set()

    async def unload(self) -> None:
        decoder, model, ctx = self._decoder, self._model, self._ctx
        if self._embedder is not None:
            embedder, self._embedder = self._embedder, None
            await asyncio.to_thread(embedder.close)
        if decoder is None:
            return
        self._decoder = None
        for job in list(self._jobs):
            job.cancel.set()  # running and waiting jobs finish with CANCELLED
        await asyncio.to_thread(decoder.stop)
        await asyncio.to_thread(_close, model, ctx)
        self._model = self._ctx = self._template = self._grammars = None

    def stats(self) -> CounterSnapshot:
        return self._counters.snapshot()

    def prefix_summary(self) -> PrefixSummary | None:
        decoder = self._decoder
        if decoder is None or decoder.prefix is None:
            return None
        return decoder.prefix.summary()

    def set_prefix_cache_limit(self, tokens: int) -> None:
        """From any thread: cached prefixes beyond `tokens` are dropped (the worker's
        memory manager making room for another model); no-op without a cache."""
        decoder = self._decoder
        if decoder is not None and decoder.prefix is not None:
            decoder.prefix.set_limit(tokens)

    def evaluated_prompt_tokens(self, request_id: str) -> int | None:
        """Prompt tokens a recent finished request ran through the model (None: unknown)."""
        decoder = self._decoder
        return decoder.evaluated.get(request_id) if decoder is not None else None

    def _prompt_tokens(self, req: EngineRequest) -> list[int]:
        # Tokenizing reads only the vocabulary, so it is safe beside a running decode.
        if req.prompt_token_ids is not None:
            return list(req.prompt_token_ids)
        if req.messages:
            assert self._template is not None
            rendered = self._template.render(req.messages, req.tools)
            return list(
                self._model.tokenize(
                    rendered.text.encode("utf-8"),
                    add_bos=not rendered.starts_with_bos,
                    special=True,
                )
            )
        # Exactly as Llama.create_completion tokenizes, so greedy output matches it.
        return list(self._model.tokenize(req.prompt.encode("utf-8"), add_bos=True, special=True))


# llama.cpp caps sequence ids at 64 in some builds.
MAX_SEQUENCE_IDS = 64


def live_sequences(spec: ModelSpec) -> int:
    """Sequence ids for requests: the spec's, else the default, within llama.cpp's ids."""
    return min(spec.max_parallel_sequences or DEFAULT_SEQUENCES, MAX_SEQUENCE_IDS)


def _open(spec: ModelSpec) -> tuple[Any, Any]:
    import llama_cpp
    from llama_cpp._internals import LlamaContext, LlamaModel

    _check_options(spec)
    model_params = llama_cpp.llama_model_default_params()
    # Metal/CUDA builds offload this many layers; the CPU build ignores it.
    model_params.n_gpu_layers = int(spec.extra.get("n_gpu_layers", "0"))
    model: Any = LlamaModel(path_model=str(spec.path), params=model_params, verbose=False)
    try:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = spec.context_length
        params.n_batch = params.n_ubatch = min(spec.batch_size, spec.context_length)
        params.n_seq_max = live_sequences(spec)
        # Unified (the default): sequences share the cells, so one long prompt may use them
        # all, but every sequence's attention then runs over every used cell. "0" gives
        # each sequence a stream of n_ctx / sequences cells: requests are capped at that,
        # and concurrent long sequences stop slowing each other (bench/README.md).
        params.kv_unified = _flag(spec, "kv_unified", default=True)
        params.n_threads = params.n_threads_batch = spec.threads
        # Off, as llama-cpp-python's Llama has it: greedy output then matches Llama's token
        # for token (the fused kernel rounds differently); "flash_attn": "1" turns it on.
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if _flag(spec, "flash_attn", default=False)
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        ctx: Any = LlamaContext(model=model, params=params, verbose=False)
    except BaseException:
        model.close()
        raise
    if not params.kv_unified and int(ctx.n_ctx()) != spec.context_length:
        # llama.cpp rounds each stream up (to 256 cells): more memory than the budget
        # counted for this context.
        cells = int(ctx.n_ctx())
        _close(model, ctx)
        raise InvalidArgument.for_field(
            "load_options.extra.kv_unified",
            f"with kv_unified=0 the context ({spec.context_length}) is split into "
            f"{params.n_seq_max} streams that llama.cpp rounds up to {cells} cells in all; "
            f"use a context of {cells} or fewer parallel sequences",
        )
    if ctx.n_ctx() > model.n_ctx_train() > 0:
        log.info(
            "%s: context %d exceeds the %d tokens the model was trained with",
            spec.key,
            ctx.n_ctx(),
            model.n_ctx_train(),
        )
    return model, ctx


def _seq_cells(ctx: Any) -> int:
    import llama_cpp

    return int(llama_cpp.llama_n_ctx_seq(ctx.ctx))


def _check_options(spec: ModelSpec) -> None:
    """INVALID_ARGUMENT for option values this engine cannot read (a version registered
    before the registry checked them): modelyard/engine_options.py holds the rules."""
    unreadable = unreadable_values(spec.extra, (common_pb2.ENGINE_LLAMA_CPP,))
    if unreadable:
        raise InvalidArgument.for_violations(
            [FieldViolation(f"load_options.extra.{key}", why) for key, why in unreadable]
        )


def _flag(spec: ModelSpec, key: str, *, default: bool) -> bool:
    """A "0"/"1" option `_check_options` has let through."""
    return spec.extra.get(key, "1" if default else "0") == "1"


def _prefix_cache(spec: ModelSpec, ctx: Any, n_ctx: int) -> KvPrefixCache | None:
    import llama_cpp

    limit = prefix_cache_tokens(n_ctx, spec.prefix_cache_share)
    replies = _flag(spec, "prefix_cache_replies", default=True)
    return KvPrefixCache(llama_cpp, ctx, limit=limit, replies=replies) if limit > 0 else None


def _close(model: Any, ctx: Any) -> None:
    ctx.close()  # the context before its model
    model.close()


def _token_text(model: Any, token: int) -> str:
    if token < 0:
        return ""
    return bytes(model.detokenize([token], special=True)).decode("utf-8", errors="replace")
