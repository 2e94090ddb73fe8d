"""Continuous batching for llama.cpp: one thread, one context, many sequences.

Shaped like the llama.cpp server's slot loop. Each running request owns a
sequence id in one context whose KV cache is unified (all sequences share its
cells). Every step the loop builds one `llama_batch` holding the next token of
every decoding sequence plus a chunk of at most `PREFILL_CHUNK` prompt tokens of
sequences still reading their prompt (the fewest left first), runs one
`llama_decode`, and samples each sequence's next token from its own row of logits
with its own llama.cpp sampler chain (penalties, top-k, top-p, min-p, temperature,
seeded dist; greedy at temperature 0, as `Llama` does). New requests join between
steps, so a long prompt delays the running streams by one chunk, not by the whole
prompt, and a short prompt admitted after it does not wait for it.

Each request reserves KV cells on admission and may grow them
(`llama_slots`: the reservation rules); it waits for a later step while the
reservations would overflow the shared cache, so `llama_decode` never runs out
of cells mid-stream. Should every running sequence stall at once, the one
holding the most cells ends with CONTEXT_LENGTH, freeing its cells for the others.
Finished sequences' KV is saved to host memory as cached prefixes (`llama_prefix`)
that a request sharing their first tokens starts from; they hold no cells.

Everything here runs on the process's one llama.cpp compute thread
(`llama_compute`: every model takes turns there, one step each) except `submit`
and `stop`, which only touch the pending list under its lock.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from modelyard.errors import InvalidArgument
from worker.counters import SequenceCounters
from worker.engines.base import (
    Finished,
    FinishReason,
    Piece,
    Scheduled,
    TokenLogprob,
)
from worker.engines.channel import DecodeFailed
from worker.engines.llama_compute import COMPUTE
from worker.engines.llama_grammar import GrammarDeadEnd, dead_end
from worker.engines.llama_pieces import TokenPieces
from worker.engines.llama_prefix import KvPrefixCache
from worker.engines.llama_sampling import sampler_chain, token_logprob
from worker.engines.llama_slots import Job, Slot
from worker.engines.prefix_summary import finished_chains
from worker.engines.text import TextStream

log = logging.getLogger(__name__)

# Prompt tokens per step while other sequences are decoding: bounds their stall to
# one chunk's prefill (~0.3 s on 2 cores for SmolLM2) per step.
PREFILL_CHUNK = 64
KEPT_EVALUATED = 256  # recent requests whose evaluated prompt tokens `evaluated` remembers


class BatchDecoder:
    """Owns the context; `turn` is one step of it on the compute thread."""

    def __init__(
        self,
        model: Any,  # llama_cpp._internals.LlamaModel
        ctx: Any,  # llama_cpp._internals.LlamaContext
        *,
        n_ctx: int,
        n_batch: int,
        n_seq: int,
        counters: SequenceCounters,
        key: str,
        step_delay_s: float = 0.0,
        prefix: KvPrefixCache | None = None,
        seq_cells: int | None = None,
    ) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaBatch

        self._llama_cpp = llama_cpp
        self._model, self._ctx = model, ctx
        self._n_vocab = int(model.n_vocab())
        self._piece = TokenPieces(model)
        self.n_ctx, self.n_batch, self.n_seq = n_ctx, n_batch, n_seq
        # The most cells one sequence may hold: the whole context when the cache is
        # unified, its own stream's share when each sequence has one (kv_unified=0).
        self.seq_cells = n_ctx if seq_cells is None else seq_cells
        self._counters = counters
        self._key = key  # the model, in logs (every model steps on one thread)
        self._step_delay_s = step_delay_s
        self.prefix = prefix
        # request id -> prompt tokens evaluated, for the most recent finished requests.
        self.evaluated: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._batch: Any = LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self._pending: collections.deque[Job] = collections.deque()
        self._slots: list[Slot] = []
        self._free_ids = list(range(n_seq - 1, -1, -1))
        self._cond = COMPUTE.cond  # one lock for every loop on the compute thread
        self._stopping = False
        self._stopped = threading.Event()  # set once the compute thread let go of it
        COMPUTE.attach(self)  # takes turns from now on

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the decode loop has stopped")
            self._pending.append(job)
            # Waiting here for cells counts as queued: the worker's status stays truthful.
            self._counters.enqueued(job.reserve)
            self._cond.notify()

    def stop(self) -> None:
        """Blocking (never on the compute thread): end every stream as CANCELLED and
        wait until the compute thread has let go of the context."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._stopped.wait()
        self._batch.close()

    # -- on the compute thread ------------------------------------------------------

    def has_work(self) -> bool:
        return self._stopping or bool(self._slots) or bool(self._pending)

    def turn(self) -> bool:
        with self._cond:
            stopping = self._stopping
            admitted = [] if stopping else self._admit()
        if stopping:
            self._wind_down()
            self._stopped.set()
            return False
        for slot in admitted:
            self._start(slot)
        try:
            self._step()
            if self._step_delay_s and self._slots:
                time.sleep(self._step_delay_s)  # simulated slow hardware
        except Exception as err:
            log.exception("llama.cpp decode step of %s failed", self._key)
            for slot in list(self._slots):
                self._end(slot, DecodeFailed(err))
        return True

    def _wind_down(self) -> None:
        for slot in list(self._slots):
            self._end(slot, None)
        with self._cond:
            left = list(self._pending)
            self._pending.clear()
        for job in left:
            self._counters.dequeued(job.reserve)
            job.emit(Finished(FinishReason.CANCELLED, len(job.prompt_tokens), 0))
        if self.prefix is not None:
            self.prefix.clear()

    def _admit(self) -> list[Slot]:
        """Under the lock: move pending jobs into free sequences while their cells fit."""
        reserved = sum(s.reserve for s in self._slots)
        admitted: list[Slot] = []
        if any(s.stalled for s in self._slots):
            return admitted  # the next free cells are the stalled sequence's
        while self._pending and self._free_ids:
            job = self._pending[0]
            reserve = min(job.reserve, self.seq_cells)
            if self._slots and reserved + reserve > self.n_ctx:
                break  # waits for a sequence to finish; FIFO, so no starvation
            self._pending.popleft()
            self._counters.dequeued(job.reserve)
            seq_id = self._free_ids.pop()
            try:
                slot = self._new_slot(job, seq_id, reserve)
            except InvalidArgument as err:  # a checked grammar over a matcher's limits
                self._free_ids.append(seq_id)
                job.emit(DecodeFailed(err))
                continue
            reserved += reserve
            self._reuse(slot)
            self._slots.append(slot)
            admitted.append(slot)
        return admitted

    def _reuse(self, slot: Slot) -> None:
        """Start the sequence from the longest cached prefix of its prompt."""
        cache = self.prefix
        if cache is None:
            return
        entry, n = cache.match(slot.job.prompt_tokens)
        if entry is not None and cache.restore_into(entry, slot.seq_id, n):
            slot.fed = slot.n_past = slot.cached = n
            slot.kv = slot.job.prompt_tokens[:n]

    def _new_slot(self, job: Job, seq_id: int, reserve: int) -> Slot:
        sampler = sampler_chain(self._n_vocab, job.request, job.grammar)
        return Slot(
            job,
            seq_id,
            sampler,
            reserve,
            TextStream(job.request.stop),
            room=self.seq_cells - len(job.prompt_tokens),
        )

    def _start(self, slot: Slot) -> None:
        if not slot.cached:
            self._memory_seq_rm(slot.seq_id)
        self._counters.started()
        if not slot.job.emit(Scheduled(len(slot.job.prompt_tokens))):
            slot.job.cancel.set()

    def _step(self) -> None:
        for slot in list(self._slots):
            if slot.job.cancel.is_set():
                self._end(slot, FinishReason.CANCELLED)
        if not self._slots:
            return
        n, rows = self._fill_batch()
        if n == 0:
            # Every sequence stalled, waiting for cells that only one of them ending frees.
            stalled = [s for s in self._slots if s.stalled]
            if stalled:
                self._end_tail(max(stalled, key=lambda s: s.reserve), FinishReason.CONTEXT_LENGTH)
            return
        batch = self._batch.batch
        batch.n_tokens = n
        rc = self._llama_cpp.llama_decode(self._ctx.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for a batch of {n} tokens")
        for index, slot in rows:
            if slot in self._slots:
                try:
                    token = slot.sampler.sample(self._ctx, index)
                except GrammarDeadEnd:
                    self._end(slot, DecodeFailed(dead_end(slot.job.request)))
                    continue
                top = slot.job.request.logprobs  # only when asked: it reads the whole row
                logprob = (
                    None
                    if top is None
                    else token_logprob(self._model, self._ctx, index, token, top)
                )
                self._accept(slot, token, logprob)

    def _fill_batch(self) -> tuple[int, list[tuple[int, Slot]]]:
        """Each decoding sequence's next token, then prompt chunks: (tokens, logits rows)."""
        batch = self._batch.batch
        n = 0
        rows: list[tuple[int, Slot]] = []

        def add(token: int, slot: Slot, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = slot.n_past
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.seq_id
            batch.logits[n] = logits
            if logits:
                rows.append((n, slot))
            slot.kv.append(token)
            slot.n_past += 1
            n += 1

        decoding = [
            s
            for s in self._slots
            if not s.prefilling and s.next_token is not None and self._has_cell(s)
        ]
        for slot in decoding:
            assert slot.next_token is not None
            add(slot.next_token, slot, True)
            slot.next_token = None
        budget = self.n_batch - n
        if decoding:
            budget = min(budget, PREFILL_CHUNK)
        for slot in self._prefill_order():
            if budget <= 0:
                break
            prompt = slot.job.prompt_tokens
            take = min(budget, len(prompt) - slot.fed)
            if take > 1 and len(prompt) - slot.fed - take == 1:
                take -= 1  # the last prompt token never in a batch of its own (llama_prefix)
            for i in range(slot.fed, slot.fed + take):
                add(prompt[i], slot, i == len(prompt) - 1)
            slot.fed += take
            slot.evaluated += take
            budget -= take
        return n, rows

    def _prefill_order(self) -> list[Slot]:
        """Sequences still reading their prompt, the fewest tokens left first: a request
        with most of its prompt cached (a chat's next turn) gets its first token within a
        step instead of waiting out a long cold prompt admitted before it. The long one
        takes what is left of every step's budget, and waits at most for the shorter
        prompts among the sequences running."""
        prefilling = [s for s in self._slots if s.prefilling]
        if len(prefilling) > 1:
            prefilling.sort(key=lambda s: len(s.job.prompt_tokens) - s.fed)
        return prefilling

    def _has_cell(self, slot: Slot) -> bool:
        """Whether the sequence's next token has a reserved cell, growing its reservation
        if it ran out (only a request without max_tokens does); False: stalled."""
        if slot.n_past < slot.reserve:
            return True
        others = sum(s.reserve for s in self._slots if s is not slot)
        want = slot.wanted(self.seq_cells)
        grown = min(want, self.n_ctx - others)
        slot.stalled = grown <= slot.n_past
        if not slot.stalled:
            slot.reserve = grown
        return not slot.stalled

    def _end_tail(self, slot: Slot, reason: FinishReason) -> None:
        """End a sequence between steps (its tokens all streamed): stream what its text
        held back (a partial character, a possible stop sequence's start), then finish."""
        out = slot.text.finish()
        slot.reply.append(out.text)
        if out.text and not slot.job.emit(Piece(out.text, ())):
            reason = FinishReason.CANCELLED
        elif out.stop is not None:
            self._end(slot, FinishReason.STOP_SEQUENCE, out.stop)
            return
        self._end(slot, reason)

    def _accept(self, slot: Slot, token: int, logprob: TokenLogprob | None) -> None:
        """One sampled token: stream it, or end the sequence."""
        job, req = slot.job, slot.job.request
        piece = self._piece(token)
        if piece is None:  # end of generation
            self._end_tail(slot, FinishReason.STOP)
            return
        slot.produced += 1
        self._counters.generated(1)
        chunk = slot.text.feed(piece)
        reason: FinishReason | None = None
        if chunk.stop is not None:
            reason = FinishReason.STOP_SEQUENCE
        elif slot.produced >= req.max_tokens:
            reason = FinishReason.LENGTH
        elif slot.produced >= slot.room:
            reason = FinishReason.CONTEXT_LENGTH
        out, stop = chunk.text, chunk.stop or ""
        if reason is not None and reason is not FinishReason.STOP_SEQUENCE:
            tail = slot.text.finish()
            out += tail.text
            if tail.stop is not None:
                reason, stop = FinishReason.STOP_SEQUENCE, tail.stop
        slot.reply.append(out)
        if not job.emit(Piece(out, (token,), () if logprob is None else (logprob,))):
            self._end(slot, FinishReason.CANCELLED)
        elif reason is not None:
            self._end(slot, reason, stop)
        else:
            slot.next_token = token

    def _end(self, slot: Slot, outcome: FinishReason | DecodeFailed | None, stop: str = "") -> None:
        """Free the sequence, then tell the consumer (None: the loop is stopping)."""
        self._slots.remove(slot)
        if isinstance(outcome, FinishReason):
            self._keep_prefix(slot, outcome)
        self._memory_seq_rm(slot.seq_id)
        slot.sampler.close()
        self._free_ids.append(slot.seq_id)
        n_prompt = len(slot.job.prompt_tokens)
        self._counters.prompt(n_prompt, slot.cached)
        self.evaluated[slot.job.request.request_id] = slot.evaluated
        while len(self.evaluated) > KEPT_EVALUATED:
            self.evaluated.popitem(last=False)
        # Count it finished before the consumer hears so: a status read right after the
        # stream ends never shows it running.
        self._counters.finished()
        if isinstance(outcome, DecodeFailed):
            slot.job.emit(outcome)
        else:
            reason = outcome if outcome is not None else FinishReason.CANCELLED
            finished = Finished(reason, n_prompt, slot.produced, stop, slot.cached)
            slot.job.emit(finished)

    def _keep_prefix(self, slot: Slot, reason: FinishReason) -> None:
        """The sequence's KV becomes a cached prefix (a decode failure's is never kept)."""
        if self.prefix is None:
            return
        n_prompt, replies = len(slot.job.prompt_tokens), self.prefix.replies
        # Its chains only once the whole prompt is in: a prefix cut mid-prompt holds none.
        chains = []
        if slot.fed == n_prompt:
            reply = "".join(slot.reply)
            chains = finished_chains(slot.job.request, reply, reason, with_reply=replies)
        self.prefix.keep(slot.seq_id, slot.kv if replies else slot.kv[:n_prompt], chains)

    def _memory_seq_rm(self, seq_id: int) -> None:
        memory = self._llama_cpp.llama_get_memory(self._ctx.ctx)
        self._llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
