"""Hugging Face transformers on torch: CPU, MPS or CUDA; HF checkpoints and GGUF.

GGUF files are dequantized on load (`from_pretrained(dir, gguf_file=...)`). Decoding
is our own token loop over `model(...)` with the KV cache (`past_key_values`), on one
thread per engine that owns the model, so every token streams out the moment it is
chosen and a cancel stops it within one token. Requests run one at a time, FIFO.

Why not the library's continuous batching (`generate_batch` / `ContinuousBatchingManager`,
transformers >= 4.56): it needs the paged-attention kernels ("sdpa_paged"), is marked
experimental, and on CPU it brought no measured gain for this engine's role, which
is correctness and portability (MPS) rather than throughput: vLLM is the batching
engine. The loop is small enough to swap for it once it settles.

Output formats (JSON, regex, grammars, forced tool calls) are xgrammar's token bitmask
applied to each step's logits (worker.engines.transformers_grammar).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import AsyncGenerator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from modelyard.errors import InvalidArgument
from worker.counters import CounterSnapshot, SequenceCounters
from worker.engines.base import (
    EmbedRequest,
    EmbedResult,
    EngineEvent,
    EngineRequest,
    Finished,
    FinishReason,
    LoadedInfo,
    ModelSpec,
    Piece,
    Scheduled,
    TokenLogprob,
)
from worker.engines.channel import DecodeFailed, EventChannel, engine_events
from worker.engines.common import (
    EngineNotLoaded,
    check_logit_bias,
    check_prompt,
    refuse_unsupported,
)
from worker.engines.embed_common import embedding_only, not_embedding_model
from worker.engines.hf_embed import HfEmbedder, open_embedder
from worker.engines.hf_prompt import HfPrompter
from worker.engines.text import StopMatcher
from worker.engines.transformers_grammar import FormatCompiler, SequenceGrammar
from worker.engines.transformers_sampling import next_token, token_logprob

log = logging.getLogger(__name__)

ENGINE_NAME = "transformers"


@dataclass(eq=False)
class _Job:
    request: EngineRequest
    prompt: list[int]
    channel: EventChannel[EngineEvent | DecodeFailed]
    cancel: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    grammar: Any = None  # xgrammar's CompiledGrammar for the output format, if any


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    device: Any
    eos: frozenset[int]
    context: int
    formats: FormatCompiler


class TransformersEngine:
    name = ENGINE_NAME

    def __init__(self, counters: SequenceCounters | None = None) -> None:
        self._counters = counters if counters is not None else SequenceCounters()
        self._executor: ThreadPoolExecutor | None = None
        self._loaded: _Loaded | None = None
        self._prompter: HfPrompter | None = None
        self._key = ""
        self._embedder: HfEmbedder | None = None  # an embedding model: no decoding
        self._jobs: dict[_Job, Future[None]] = {}

    async def load(self, spec: ModelSpec) -> LoadedInfo:
        if self._loaded is not None:
            raise RuntimeError(f"engine already holds {self._key}")
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"hf-{spec.key}")
        if spec.embedding:
            return await self._load_embedder(spec, executor)
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(executor, _open, spec)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor, self._loaded, self._key = executor, loaded, spec.key
        self._prompter = HfPrompter(loaded.tokenizer, model=spec.key)
        return LoadedInfo(
            engine=ENGINE_NAME,
            context_length=loaded.context,
            vocab_size=len(loaded.tokenizer),
            has_chat_template=self._prompter.has_chat_template,
        )

    async def _load_embedder(self, spec: ModelSpec, executor: ThreadPoolExecutor) -> LoadedInfo:
        try:
            embedder = await asyncio.get_running_loop().run_in_executor(
                executor, open_embedder, spec
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor, self._embedder, self._key = executor, embedder, spec.key
        return LoadedInfo(ENGINE_NAME, embedder.context, len(embedder.tokenizer), False)

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        embedder, executor = self._embedder, self._executor
        if executor is None:
            raise EngineNotLoaded(ENGINE_NAME)
        if embedder is None:
            raise not_embedding_model(self._key)
        return await asyncio.get_running_loop().run_in_executor(executor, embedder.embed, req)

    async def generate(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        loaded, prompter, executor = self._loaded, self._prompter, self._executor
        if self._embedder is not None:
            raise embedding_only(self._key)
        if loaded is None or prompter is None or executor is None:
            raise EngineNotLoaded(ENGINE_NAME)
        prompt = prompter.token_ids(req)
        check_prompt(prompt, loaded.context, self._key)
        refuse_unsupported(req, ENGINE_NAME, formats=True, logit_bias=True, tools=True)
        check_logit_bias(req, len(loaded.tokenizer))
        job = _Job(req, prompt, EventChannel(asyncio.get_running_loop()))
        if req.output_format is not None:  # compiled before queueing: a bad one is refused
            job.grammar = await asyncio.to_thread(loaded.formats.compile, req.output_format)
        cost = len(prompt) + req.planned_tokens
        self._counters.enqueued(cost)
        future = executor.submit(_decode, loaded, job, self._counters, cost)
        self._jobs[job] = future
        try:
            async for event in engine_events(job.channel, ENGINE_NAME, req.stream_interval_s):
                yield event
        finally:
            job.cancel.set()
            job.channel.close()
            self._jobs.pop(job, None)
            if future.cancel():  # never started: it leaves the queue here
                self._counters.dequeued(cost)

    def abort(self, request_id: str) -> None:
        for job in list(self._jobs):
            if job.request.request_id == request_id:
                job.cancel.set()

    async def unload(self) -> None:
        loaded, executor = self._loaded, self._executor
        if self._embedder is not None and executor is not None:
            self._embedder = self._executor = None
            executor.shutdown(wait=True, cancel_futures=True)
            return
        if loaded is None or executor is None:
            return
        self._loaded, self._prompter = None, None
        for job in list(self._jobs):
            job.cancel.set()
        # Released on the owner thread, behind any job still winding down.
        await asyncio.get_running_loop().run_in_executor(executor, _close, loaded)
        executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None

    def stats(self) -> CounterSnapshot:
        return self._counters.snapshot()


def _pick_device(wanted: str) -> Any:
    import torch

    if wanted:
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _open(spec: ModelSpec) -> _Loaded:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(spec.threads, 1))
    device = _pick_device(spec.extra.get("device", ""))
    # float32 on CPU: exact and, without AMX, as fast as bf16; half precision on GPUs.
    default = "float32" if device.type == "cpu" else "bfloat16"
    dtype = getattr(torch, spec.extra.get("dtype", default))
    if spec.path.is_dir():
        where, kwargs = str(spec.path), {}
    else:  # a GGUF file: transformers dequantizes it
        where, kwargs = str(spec.path.parent), {"gguf_file": spec.path.name}
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs).to(device).eval()
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    trained = int(getattr(model.config, "max_position_embeddings", 0) or spec.context_length)
    # The logits' width: the config's vocabulary may be padded past the tokenizer's.
    width = max(int(getattr(model.config, "vocab_size", 0) or 0), len(tokenizer))
    formats = FormatCompiler(tokenizer, width, eos_ids)
    return _Loaded(model, tokenizer, device, eos_ids, min(spec.context_length, trained), formats)


def _close(loaded: _Loaded) -> None:
    import gc

    import torch

    device = loaded.device
    loaded.model = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _decode(loaded: _Loaded, job: _Job, counters: SequenceCounters, cost: int) -> None:
    """One job on the owner thread; always ends the stream with Finished or DecodeFailed."""
    counters.dequeued(cost)
    n_prompt = len(job.prompt)
    if job.cancel.is_set() or loaded.model is None:
        job.channel.put(Finished(FinishReason.CANCELLED, n_prompt, 0))
        return
    counters.started()
    try:
        job.channel.put(Scheduled(n_prompt))
        reason, produced, stop = _sample(loaded, job, counters)
    except Exception as err:
        if isinstance(err, InvalidArgument):  # the request's fault (a format's dead end)
            log.info("decoding %s refused: %s", job.request.request_id, err)
        else:
            log.exception("decoding %s failed", job.request.request_id)
        counters.finished()
        job.channel.put(DecodeFailed(err))
        return
    counters.prompt(n_prompt, 0)  # no prefix reuse here: every prompt token is evaluated
    counters.finished()
    job.channel.put(Finished(reason, n_prompt, produced, stop))


def _reason(
    stop: str | None, produced: int, max_tokens: int, room: int, complete: bool
) -> FinishReason | None:
    """Why decoding ends after this token, or None to go on."""
    if stop is not None:
        return FinishReason.STOP_SEQUENCE
    if complete:
        return FinishReason.STOP
    if produced >= max_tokens:
        return FinishReason.LENGTH
    if produced >= room:
        return FinishReason.CONTEXT_LENGTH
    return None


def _end_at_eos(stops: StopMatcher, job: _Job) -> tuple[FinishReason, str]:
    """At EOS: stream the held-back text, unless it completes a stop sequence."""
    text, stop = stops.push("")
    tail = text + (stops.flush() if stop is None else "")
    if tail and not job.channel.put(Piece(tail, ())):
        return FinishReason.CANCELLED, ""
    if stop is not None:
        return FinishReason.STOP_SEQUENCE, stop
    return FinishReason.STOP, ""


def _sample(
    loaded: _Loaded, job: _Job, counters: SequenceCounters
) -> tuple[FinishReason, int, str]:
    import torch

    req, tok = job.request, loaded.tokenizer
    generator = torch.Generator(device="cpu" if loaded.device.type == "mps" else loaded.device)
    generator.manual_seed(
        req.sampling.seed if req.sampling.seed is not None else random.getrandbits(63)
    )
    room = loaded.context - len(job.prompt)
    stops = StopMatcher(req.stop)
    grammar = (
        None
        if job.grammar is None
        else SequenceGrammar(job.grammar, loaded.formats.vocab_size, loaded.eos, _field(req))
    )
    constrain = None if grammar is None else grammar.mask
    produced: list[int] = []
    shown = ""  # decoded text of `produced` already passed to the stop matcher
    past: Any = None
    step = torch.tensor([job.prompt], device=loaded.device)
    with torch.inference_mode():
        while True:
            if job.cancel.is_set():
                return FinishReason.CANCELLED, len(produced), ""
            out = loaded.model(input_ids=step, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1]
            token = next_token(
                logits, job.prompt + produced, req.sampling, generator, req.logit_bias, constrain
            )
            if token in loaded.eos:
                eos_reason, eos_stop = _end_at_eos(stops, job)
                return eos_reason, len(produced), eos_stop
            # Complete: only end-of-text may follow, so end here rather than decode it.
            complete = grammar is not None and grammar.accept(token)
            produced.append(token)
            counters.generated(1)
            # Decode the whole tail: byte-level BPE needs context for spaces and UTF-8.
            full = tok.decode(produced, skip_special_tokens=True)
            new = "" if full.endswith("\ufffd") else full[len(shown) :]
            if new:
                shown = full
            text, stop = stops.push(new)
            reason = _reason(stop, len(produced), req.max_tokens, room, complete)
            if reason is not None and stop is None:
                text += stops.flush()
            if not job.channel.put(Piece(text, (token,), _logprobs(tok, logits, token, req))):
                return FinishReason.CANCELLED, len(produced), ""
            if reason is not None:
                return reason, len(produced), stop or ""
            step = torch.tensor([[token]], device=loaded.device)


def _field(req: EngineRequest) -> str:
    return req.output_format.field if req.output_format is not None else ""


def _logprobs(tok: Any, logits: Any, token: int, req: EngineRequest) -> tuple[TokenLogprob, ...]:
    if req.logprobs is None:
        return ()
    # A token's text, not its raw bytes: a token holding part of a UTF-8 character
    # shows as U+FFFD (the tokenizer does not expose byte pieces uniformly).
    return (token_logprob(logits, token, req.logprobs, lambda t: tok.decode([t]).encode()),)
