"""What one llama.cpp sequence holds in the batch decoder (`llama_batch`): its job and
its slot, and the rules of its KV reservation.

A request reserves prompt + max_tokens cells (capped at the context) on admission. A
request that left max_tokens unset reserves prompt + its expected output instead
(`EngineRequest.expected_tokens`): reserving the whole context would let one such
request hold every cell. When it has used its cells it grows its reservation by its
expected output again, from free cells (the decoder evicts cached prefixes first);
while none are free it skips steps (stalls) and no new request is admitted, so the next
freed cells are its. Reservations never sum past the context, so no sequence ever
writes into cells another holds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from worker.engines.base import EngineEvent, EngineRequest
from worker.engines.channel import DecodeFailed, EventChannel
from worker.engines.llama_grammar import GrammarPlan
from worker.engines.llama_sampling import SequenceSampler
from worker.engines.text import TextStream

MIN_GROWTH = 16  # cells a sequence without max_tokens grows by at least, once out of cells


@dataclass(eq=False)  # identity, so jobs can key a dict
class Job:
    request: EngineRequest
    prompt_tokens: list[int]
    channel: EventChannel[EngineEvent | DecodeFailed]
    cancel: threading.Event = field(default_factory=threading.Event)
    grammar: GrammarPlan | None = None  # the output's format, compiled before queueing

    @property
    def reserve(self) -> int:
        """Cells reserved on admission: the prompt and the output planned for."""
        return len(self.prompt_tokens) + self.request.planned_tokens

    @property
    def bound(self) -> int:
        """Cells the sequence may ever need: the prompt and max_tokens."""
        return len(self.prompt_tokens) + self.request.max_tokens

    def emit(self, event: EngineEvent | DecodeFailed) -> bool:
        return self.channel.put(event)


@dataclass(eq=False)
class Slot:
    job: Job
    seq_id: int
    sampler: SequenceSampler
    reserve: int  # cells reserved; grows for a request without max_tokens (see above)
    text: TextStream
    room: int  # tokens this sequence may generate before the context is full
    fed: int = 0  # prompt tokens in the KV cache
    n_past: int = 0
    next_token: int | None = None  # sampled, not yet fed
    stalled: bool = False  # used its reserved cells, and none were free to grow into
    produced: int = 0
    cached: int = 0  # prompt tokens shared from a cached prefix
    evaluated: int = 0  # prompt tokens this sequence ran through the model
    kv: list[int] = field(default_factory=list)  # the tokens of its KV, position by position
    reply: list[str] = field(default_factory=list)  # the text it streamed

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.job.prompt_tokens)

    def wanted(self, n_ctx: int) -> int:
        """The reservation to grow to once its cells are used: one expected output more
        (at least MIN_GROWTH), within max_tokens and the context."""
        step = max(self.job.request.expected_tokens, MIN_GROWTH)
        return min(self.reserve + step, self.job.bound, n_ctx)
