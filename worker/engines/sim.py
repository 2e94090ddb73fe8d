"""A simulated engine: a latency model and a fixed vocabulary instead of weights.

For tests, benchmarks and capacity drills: overload and chaos runs on it measure the
mesh, not a model. It behaves like a continuous-batching engine. One asyncio task
per model runs the steps; each step admits waiting sequences into free slots (at
most `max_sequences` run), sleeps for the step's modelled time and then gives every
running sequence one token. A step with n sequences takes

    prefill_ms_per_token * (prompt tokens of the sequences joining it)
    + decode_ms_per_token * (1 + batch_slowdown * (n - 1))

so a joining prompt stalls the batch for its prefill, as in an engine without
chunked prefill. Prompt tokens the model's prefix cache holds (`sim_prefix`, a
share of the context as in llama.cpp) cost no prefill and count as cached.
Steps are timed against deadlines, so the time spent handing out tokens does not
slow the model down. No threads and one timer per step, however
many sequences run: cheap enough for benchmarks at thousands of requests a second.

Everything runs on the event loop, so `abort` and a closed stream free the
sequence's slot at once (the step in flight simply drops it) and `unload` ends
every stream as CANCELLED. Text and finish reasons come from `sim_vocab`:
deterministic per prompt, seed and sampling. The knobs are `sim_options`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from modelyard.errors import Internal, InvalidArgument
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
)
from worker.engines.common import EngineNotLoaded, check_prompt, refuse_unsupported
from worker.engines.embed_common import not_embedding_model
from worker.engines.prefix_summary import PrefixSummary, finished_chains, request_chain
from worker.engines.sim_embed import sim_embed
from worker.engines.sim_options import SIM_OPTIONS, SimOptions, parse_options
from worker.engines.sim_prefix import SimPrefixCache
from worker.engines.sim_vocab import EOS_ID, SimSampler, SimVocabulary
from worker.engines.text import StopMatcher

log = logging.getLogger(__name__)

ENGINE_NAME = "sim"
# Sequences decoded together when neither sim_max_sequences nor the worker says.
DEFAULT_SEQUENCES = 32

__all__ = ["ENGINE_NAME", "SIM_OPTIONS", "LoopClock", "SimClock", "SimEngine"]


class SimClock:
    """Time as the engine sees it; tests substitute a virtual one."""

    def now(self) -> float:
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        raise NotImplementedError


class LoopClock(SimClock):
    """The event loop's monotonic clock and asyncio.sleep."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False)  # identity: sequences are set members
class _Sequence:
    request: EngineRequest
    prompt: list[int]
    sampler: SimSampler
    stops: StopMatcher
    room: int  # tokens before the context window is full
    # Exceptions too: a failed step loop fails the streams instead of leaving them waiting.
    events: asyncio.Queue[EngineEvent | Exception] = field(default_factory=asyncio.Queue)
    state: _State = _State.WAITING
    produced: int = 0
    cached: int = 0  # prompt tokens the prefix cache served
    reply: list[str] = field(default_factory=list)  # the streamed text, for the cache's chains


@dataclass(frozen=True)
class _Loaded:
    key: str
    options: SimOptions
    vocab: SimVocabulary
    context: int
    max_sequences: int
    step_delay_s: float  # the worker's token_delay_ms, added to every step as elsewhere
    prefix: SimPrefixCache | None  # None: the worker turned reuse off
    embedding: bool = False


class SimEngine:
    name = ENGINE_NAME

    def __init__(
        self, counters: SequenceCounters | None = None, *, clock: SimClock | None = None
    ) -> None:
        self._counters = counters if counters is not None else SequenceCounters()
        self._clock = clock if clock is not None else LoopClock()
        self._loaded: _Loaded | None = None
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._due: float | None = None  # when the last step ended, on the clock; None: idle

    async def load(self, spec: ModelSpec) -> LoadedInfo:
        if self._loaded is not None:
            raise RuntimeError(f"engine already holds {self._loaded.key}")
        options = parse_options(spec.extra)  # a bad option fails here, before the wait
        context = min(spec.context_length, options.context_length or spec.context_length)
        max_sequences = options.max_sequences or spec.max_parallel_sequences or DEFAULT_SEQUENCES
        vocab = SimVocabulary(options.vocab_size)  # the artifact's content is not read
        if options.load_ms:
            await self._clock.sleep(options.load_ms / 1000)
        limit = int(context * spec.prefix_cache_share)
        self._loaded = _Loaded(
            spec.key,
            options,
            vocab,
            context,
            max_sequences,
            spec.token_delay_s,
            SimPrefixCache(limit) if limit > 0 else None,
            spec.embedding,
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sim-{spec.key}")
        return LoadedInfo(
            engine=ENGINE_NAME,
            context_length=context,
            vocab_size=options.vocab_size,
            has_chat_template=True,
            max_sequences=max_sequences,
        )

    async def generate(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        loaded = self._loaded
        if loaded is None:
            raise EngineNotLoaded(ENGINE_NAME)
        if self._task is None or self._task.done():
            raise Internal(f"the {ENGINE_NAME} engine's step loop has stopped")
        prompt = _prompt_tokens(loaded.vocab, req)
        check_prompt(prompt, loaded.context, loaded.key)
        if req.max_tokens < 1:
            raise InvalidArgument.for_field("max_tokens", "must be at least 1")
        refuse_unsupported(req, ENGINE_NAME)
        seq = _Sequence(
            req,
            prompt,
            SimSampler(prompt, req.sampling, loaded.vocab, loaded.options.eos_probability),
            StopMatcher(req.stop),
            room=loaded.context - len(prompt),
        )
        self._waiting.append(seq)
        self._wake.set()
        try:
            while True:
                event = await seq.events.get()
                if isinstance(event, Exception):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            self._cancel(seq)  # a no-op once finished

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        loaded = self._loaded
        if loaded is None:
            raise EngineNotLoaded(ENGINE_NAME)
        if not loaded.embedding:
            raise not_embedding_model(loaded.key)
        result = sim_embed(req, loaded.vocab, loaded.context, loaded.options.embedding_dimensions)
        # Prefill time as a generation's, so load and latency tests see embeddings cost.
        await self._clock.sleep(result.input_tokens * loaded.options.prefill_ms_per_token / 1000)
        return result

    def abort(self, request_id: str) -> None:
        for seq in [*self._running, *self._waiting]:
            if seq.request.request_id == request_id:
                self._cancel(seq)

    async def unload(self) -> None:
        task = self._task
        if self._loaded is None:
            return
        self._loaded, self._task = None, None
        for seq in [*self._running, *self._waiting]:
            self._cancel(seq)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stats(self) -> CounterSnapshot:
        return self._counters.snapshot()

    def prefix_summary(self) -> PrefixSummary | None:
        loaded = self._loaded
        return loaded.prefix.summary() if loaded is not None and loaded.prefix else None

    # -- the step loop ------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._steps()
        except Exception as err:
            log.exception("the sim engine's step loop failed")
            for seq in [*self._running, *self._waiting]:
                if seq.state is _State.RUNNING:
                    self._counters.finished()
                seq.state = _State.DONE
                seq.events.put_nowait(Internal(f"{ENGINE_NAME} failed: {err}"))
            self._running.clear()
            self._waiting.clear()

    async def _steps(self) -> None:
        while True:
            if not self._running and not self._waiting:
                self._due = None
                self._wake.clear()
                await self._wake.wait()
                continue
            joined = self._admit()
            await self._sleep_until(self._step_seconds(joined))
            self._decode_step()

    def _admit(self) -> list[_Sequence]:
        """Waiting sequences into free slots, oldest first; they hear Scheduled now."""
        assert self._loaded is not None
        joined: list[_Sequence] = []
        while self._waiting and len(self._running) < self._loaded.max_sequences:
            seq = self._waiting.popleft()
            seq.state = _State.RUNNING
            self._running.append(seq)
            self._counters.started()
            seq.cached = self._cached_tokens(seq)
            seq.events.put_nowait(Scheduled(len(seq.prompt)))
            joined.append(seq)
        return joined

    def _cached_tokens(self, seq: _Sequence) -> int:
        """The prompt tokens the prefix cache holds: its held bytes in the sim's tokens."""
        assert self._loaded is not None
        cache, vocab, req = self._loaded.prefix, self._loaded.vocab, seq.request
        if cache is None:
            return 0
        links, held_bytes = cache.lookup(request_chain(req))
        if not links:
            return 0
        if req.messages:
            lines = vocab.render_chat(req.messages[:links]).rsplit("\n", 1)[0]  # no cue
            tokens = len(vocab.encode(lines))
        else:
            tokens = len(vocab.encode(req.prompt.encode()[:held_bytes].decode(errors="ignore")))
        # One prompt token is always evaluated, as in a real engine: it yields the logits.
        return max(min(tokens, len(seq.prompt) - 1), 0)

    def _step_seconds(self, joined: list[_Sequence]) -> float:
        assert self._loaded is not None
        o = self._loaded.options
        prefill = o.prefill_ms_per_token * sum(len(s.prompt) - s.cached for s in joined)
        decode = o.decode_ms_per_token * (1 + o.batch_slowdown * (len(self._running) - 1))
        return (prefill + decode) / 1000 + self._loaded.step_delay_s

    async def _sleep_until(self, step_s: float) -> None:
        now = self._clock.now()
        # Chained to the last step's end while the loop keeps up (less than a step late), so
        # the work between steps is inside a step's time; after idling or falling behind
        # (a busy CPU: then the model runs slower, as a real one would), from now.
        late = self._due is not None and now - self._due < step_s
        start = self._due if late and self._due is not None else now
        self._due = start + step_s
        await self._clock.sleep(max(self._due - now, 0.0))

    def _decode_step(self) -> None:
        """One token for every sequence still running (a cancelled one left already)."""
        assert self._loaded is not None
        vocab, produced = self._loaded.vocab, 0
        for seq in list(self._running):
            token = seq.sampler.next_token()
            if token == EOS_ID:
                self._finish_at_eos(seq)
                continue
            produced += 1
            self._emit_token(seq, token, vocab.text(token))
        if produced:
            self._counters.generated(produced)

    def _emit_token(self, seq: _Sequence, token: int, text: str) -> None:
        seq.produced += 1
        out, stop = seq.stops.push(text)
        reason: FinishReason | None = None
        if stop is not None:
            reason = FinishReason.STOP_SEQUENCE
        elif seq.produced >= seq.request.max_tokens:
            reason = FinishReason.LENGTH
        elif seq.produced >= seq.room:
            reason = FinishReason.CONTEXT_LENGTH
        if reason is not None and stop is None:
            out += seq.stops.flush()  # ending without a match: release what was held back
        seq.reply.append(out)
        top = seq.request.logprobs
        vocab = self._loaded.vocab if self._loaded is not None else None
        logprobs = () if top is None or vocab is None else (seq.sampler.logprob(token, vocab, top),)
        seq.events.put_nowait(Piece(out, (token,), logprobs))
        if reason is not None:
            self._finish(seq, reason, stop or "")

    def _finish_at_eos(self, seq: _Sequence) -> None:
        # Held-back text is released, unless it completes a stop sequence.
        out, stop = seq.stops.push("")
        tail = out + (seq.stops.flush() if stop is None else "")
        if tail:
            seq.reply.append(tail)
            seq.events.put_nowait(Piece(tail, ()))
        if stop is not None:
            self._finish(seq, FinishReason.STOP_SEQUENCE, stop)
        else:
            self._finish(seq, FinishReason.STOP)

    def _cancel(self, seq: _Sequence) -> None:
        if seq.state is _State.WAITING:
            self._waiting.remove(seq)
        if seq.state is not _State.DONE:
            self._finish(seq, FinishReason.CANCELLED)

    def _finish(self, seq: _Sequence, reason: FinishReason, stop: str = "") -> None:
        if seq.state is _State.RUNNING:
            self._running.remove(seq)
            self._keep_prefix(seq, reason)
            # Counted before the consumer hears, as the other engines do.
            self._counters.prompt(len(seq.prompt), seq.cached)
            self._counters.finished()
        seq.state = _State.DONE
        seq.events.put_nowait(
            Finished(reason, len(seq.prompt), seq.produced, stop, cached_input_tokens=seq.cached)
        )

    def _keep_prefix(self, seq: _Sequence, reason: FinishReason) -> None:
        cache = self._loaded.prefix if self._loaded is not None else None
        if cache is not None and reason is not FinishReason.CANCELLED:
            chains = finished_chains(seq.request, "".join(seq.reply), reason)
            cache.add(chains, len(seq.prompt) + seq.produced)


def _prompt_tokens(vocab: SimVocabulary, req: EngineRequest) -> list[int]:
    if req.prompt_token_ids is not None:
        ids = list(req.prompt_token_ids)
        vocab.check_ids(ids)
        return ids
    if req.messages:
        return vocab.encode(vocab.render_chat(req.messages))
    return vocab.encode(req.prompt)
