"""llama.cpp through llama-cpp-python: GGUF models on CPU (or Metal/CUDA builds).

`Llama` is not thread-safe, so each engine owns one single-thread executor: the
load, every decode and the final close run on it, in FIFO order. The skeleton
decodes one sequence at a time (requests wait their turn); continuous batching
over several sequences with the low-level API is issue 4's.

Tokens reach the event loop one by one through an `EventChannel`; closing the
consumer's stream sets the job's cancel flag, which the decode loop checks before
every token, so an abandoned request costs at most one more token.
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

from modelyard.errors import Internal, InvalidArgument, ResourceExhausted
from worker.chat_template import ChatTemplate
from worker.engines.base import (
    EngineEvent,
    EngineRequest,
    EngineStats,
    Finished,
    FinishReason,
    LoadedInfo,
    ModelSpec,
    Piece,
    Scheduled,
)
from worker.engines.channel import EventChannel
from worker.status import SequenceCounters
from worker.text import TextStream

log = logging.getLogger(__name__)

ENGINE_NAME = "llama.cpp"


class EngineNotLoaded(RuntimeError):
    pass


@dataclass(frozen=True)
class _Failed:
    """The decode thread raised; the consumer re-raises it on the loop."""

    error: BaseException


@dataclass(eq=False)  # identity, so jobs can key a dict
class _Job:
    request: EngineRequest
    prompt_tokens: list[int]
    channel: EventChannel[EngineEvent | _Failed]
    cancel: threading.Event = field(default_factory=threading.Event)
    # Set once, by whichever comes first: the decode thread picking the job up,
    # or unload dropping it unrun. Keeps the queue counters exact.
    _left_queue: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def queued_tokens(self) -> int:
        return len(self.prompt_tokens) + self.request.max_tokens

    def leave_queue(self) -> bool:
        with self._lock:
            first, self._left_queue = not self._left_queue, True
            return first

    def emit(self, event: EngineEvent | _Failed) -> bool:
        return self.channel.put(event)


class LlamaCppEngine:
    name = ENGINE_NAME

    def __init__(
        self, counters: SequenceCounters | None = None, *, max_queued_requests: int = 64
    ) -> None:
        self._counters = counters if counters is not None else SequenceCounters()
        self._max_queued = max_queued_requests
        self._executor: ThreadPoolExecutor | None = None
        self._llama: Any = None  # llama_cpp.Llama; Any because llama_cpp ships no types
        self._template: ChatTemplate | None = None
        self._key = ""
        self._n_ctx = 0
        self._jobs: dict[_Job, Future[None]] = {}

    async def load(self, spec: ModelSpec) -> LoadedInfo:
        if self._llama is not None:
            raise RuntimeError(f"engine already holds {self._key}")
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"llama-{spec.key}")
        try:
            llama = await asyncio.get_running_loop().run_in_executor(executor, _open, spec)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor, self._llama, self._key = executor, llama, spec.key
        self._n_ctx = int(llama.n_ctx())
        self._template = ChatTemplate.from_metadata(
            llama.metadata,
            bos_token=_token_text(llama, llama.token_bos()),
            eos_token=_token_text(llama, llama.token_eos()),
            model=spec.key,
        )
        return LoadedInfo(
            engine=ENGINE_NAME,
            context_length=self._n_ctx,
            vocab_size=int(llama.n_vocab()),
            has_chat_template=not self._template.is_fallback,
        )

    async def generate(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        if self._llama is None or self._executor is None:
            raise EngineNotLoaded(f"no model loaded in this {ENGINE_NAME} engine")
        prompt_tokens = self._prompt_tokens(req)
        if not prompt_tokens:
            raise InvalidArgument.for_field("prompt", "the prompt has no tokens")
        if len(prompt_tokens) >= self._n_ctx:
            raise InvalidArgument.for_field(
                "prompt",
                f"the prompt has {len(prompt_tokens)} tokens but {self._key} is loaded "
                f"with a context window of {self._n_ctx} tokens",
            )
        queued = self._counters.snapshot().queued_requests
        if queued >= self._max_queued:
            raise ResourceExhausted(
                f"{self._key} has {queued} requests queued (limit {self._max_queued})",
                retry_after_s=1.0,
            )
        job = _Job(req, prompt_tokens, EventChannel(asyncio.get_running_loop()))
        self._counters.enqueued(job.queued_tokens)
        future = self._executor.submit(_decode, self._llama, job, self._n_ctx, self._counters)
        future.add_done_callback(lambda _: self._drop_unrun(job))
        self._jobs[job] = future
        try:
            while True:
                event = await job.channel.get()
                if isinstance(event, _Failed):
                    raise Internal(f"{ENGINE_NAME} failed: {event.error}") from event.error
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            # First thing, synchronously: the decode thread stops within one token.
            job.cancel.set()
            job.channel.close()
            self._jobs.pop(job, None)

    def abort(self, request_id: str) -> None:
        # Only sets flags: safe from gRPC done-callbacks while the stream is mid-await.
        for job in list(self._jobs):
            if job.request.request_id == request_id:
                job.cancel.set()

    async def unload(self) -> None:
        llama, executor = self._llama, self._executor
        if llama is None or executor is None:
            return
        self._llama = None
        for job in list(self._jobs):
            job.cancel.set()  # running and queued jobs finish with CANCELLED
        # Closing on the owner thread, behind any job still winding down.
        await asyncio.get_running_loop().run_in_executor(executor, llama.close)
        executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._template = None

    def stats(self) -> EngineStats:
        snap = self._counters.snapshot()
        return EngineStats(
            running_sequences=snap.running_sequences,
            queued_requests=snap.queued_requests,
            queued_tokens=snap.queued_tokens,
            generated_tokens_total=snap.generated_tokens_total,
            tokens_per_second=snap.tokens_per_second,
        )

    def _prompt_tokens(self, req: EngineRequest) -> list[int]:
        # Tokenizing reads only the vocabulary, so it is safe beside a running decode.
        if req.prompt_token_ids is not None:
            return list(req.prompt_token_ids)
        if req.messages:
            assert self._template is not None
            rendered = self._template.render(req.messages)
            return list(
                self._llama.tokenize(
                    rendered.text.encode("utf-8"),
                    add_bos=not rendered.starts_with_bos,
                    special=True,
                )
            )
        # Exactly as Llama.create_completion tokenizes, so greedy output matches it.
        return list(self._llama.tokenize(req.prompt.encode("utf-8"), add_bos=True, special=True))

    def _drop_unrun(self, job: _Job) -> None:
        # A job cancelled out of the executor queue never reached _decode.
        if job.leave_queue():
            self._counters.dequeued(job.queued_tokens)


def _open(spec: ModelSpec) -> Any:
    from llama_cpp import Llama

    llama = Llama(
        model_path=str(spec.path),
        n_ctx=spec.context_length,
        n_batch=min(spec.batch_size, spec.context_length),
        n_threads=spec.threads,
        n_threads_batch=spec.threads,
        verbose=False,
    )
    if llama.n_ctx() > llama._model.n_ctx_train() > 0:
        log.info(
            "%s: context %d exceeds the %d tokens the model was trained with",
            spec.key,
            llama.n_ctx(),
            llama._model.n_ctx_train(),
        )
    return llama


def _token_text(llama: Any, token: int) -> str:
    if token < 0:
        return ""
    return bytes(llama.detokenize([token], special=True)).decode("utf-8", errors="replace")


def _decode(llama: Any, job: _Job, n_ctx: int, counters: SequenceCounters) -> None:
    """Run one job on the owner thread. Always ends the stream with Finished or _Failed."""
    if job.leave_queue():
        counters.dequeued(job.queued_tokens)
    n_prompt = len(job.prompt_tokens)
    if job.cancel.is_set():
        job.emit(Finished(FinishReason.CANCELLED, n_prompt, 0))
        return
    counters.started()
    try:
        job.emit(Scheduled(n_prompt))
        reason, produced, stop = _sample(llama, job, n_ctx, counters)
    except Exception as err:
        log.exception("decoding %s failed", job.request.request_id)
        counters.finished()
        job.emit(_Failed(err))
        return
    # Count the sequence as finished before the consumer hears so, so a status read
    # right after the stream ends never shows it running.
    counters.finished()
    job.emit(Finished(reason, n_prompt, produced, stop))


def _sample(
    llama: Any, job: _Job, n_ctx: int, counters: SequenceCounters
) -> tuple[FinishReason, int, str]:
    import llama_cpp

    req, s = job.request, job.request.sampling
    seed = s.seed if s.seed is not None else random.getrandbits(32)
    llama.set_seed(seed & 0xFFFFFFFF)  # llama.cpp samplers take a 32-bit seed
    room = n_ctx - len(job.prompt_tokens)
    text = TextStream(req.stop)
    produced = 0
    vocab = llama._model.vocab  # llama_vocab_is_eog needs it, as in create_completion
    tokens = llama.generate(
        job.prompt_tokens,
        top_k=s.top_k,
        top_p=s.top_p,
        min_p=s.min_p,
        temp=s.temperature,
        repeat_penalty=s.repetition_penalty,
        frequency_penalty=s.frequency_penalty,
        presence_penalty=s.presence_penalty,
        reset=True,
    )
    try:
        for token in tokens:
            if job.cancel.is_set():
                return FinishReason.CANCELLED, produced, ""
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                tail = text.finish()
                if tail.text and not job.emit(Piece(tail.text, ())):
                    return FinishReason.CANCELLED, produced, ""
                if tail.stop is not None:
                    return FinishReason.STOP_SEQUENCE, produced, tail.stop
                return FinishReason.STOP, produced, ""
            produced += 1
            counters.generated(1)
            chunk = text.feed(bytes(llama.detokenize([token])))
            reason: FinishReason | None = None
            if chunk.stop is not None:
                reason = FinishReason.STOP_SEQUENCE
            elif produced >= req.max_tokens:
                reason = FinishReason.LENGTH
            elif produced >= room:
                reason = FinishReason.CONTEXT_LENGTH
            out, stop = chunk.text, chunk.stop or ""
            if reason is not None and reason is not FinishReason.STOP_SEQUENCE:
                tail = text.finish()
                out += tail.text
                if tail.stop is not None:
                    reason, stop = FinishReason.STOP_SEQUENCE, tail.stop
            if not job.emit(Piece(out, (int(token),))):
                return FinishReason.CANCELLED, produced, ""
            if reason is not None:
                return reason, produced, stop
    finally:
        tokens.close()
    # llama.generate only ends by the loop returning; reaching here means it stopped itself.
    return FinishReason.STOP, produced, ""
