"""What the scheduling plugins see: the request, the candidates, the per-cycle scratch."""

from __future__ import annotations

import random
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from modelyard.prefix import PrefixChain
from modelyard.refs import ModelKey, key_of
from modelyard.v1 import common_pb2, model_pb2, router_pb2, worker_pb2

Residency: TypeAlias = worker_pb2.ResidencyState.ValueType
Breaker: TypeAlias = router_pb2.BreakerState.ValueType
NO_PREFIX = PrefixChain((), ())
_NO_KEY = ModelKey("")
_IN_MEMORY = frozenset({worker_pb2.RESIDENCY_STATE_WARM, worker_pb2.RESIDENCY_STATE_LOADING})


@dataclass(frozen=True)
class Request:
    """One request's needs, with the route's defaults already merged under its hints."""

    request_id: str
    chat: bool
    prompt_tokens: int
    max_tokens: int  # 0: unset, the output runs to the end of the context (or a ceiling)
    objective: common_pb2.Objective.ValueType = common_pb2.OBJECTIVE_BALANCED
    max_ttft_ms: float | None = None
    max_cost_per_1k: float | None = None
    required_tags: tuple[str, ...] = ()
    min_context_length: int = 0
    session_key: str = ""
    tools: bool = False  # offers tools: only models with capabilities.tools take it
    # The request's prefix chain (modelyard/prefix.py), computed once per request.
    prefix: PrefixChain = NO_PREFIX
    embedding: bool = False  # an Embed request: only embedding models fit

    @property
    def context_needed(self) -> int:
        """The prompt plus max_tokens; with max_tokens unset, the prompt plus one token: such
        a request runs to the end of whatever context its model has (as OpenAI's does).
        An embedding generates nothing: its input alone."""
        output = 0 if self.embedding else self.max_tokens or 1
        return max(self.min_context_length, self.prompt_tokens + output)


@dataclass(eq=False, slots=True)
class Candidate:
    """A (worker, model) pair and what the router knows of it at the start of a cycle.

    Compared by identity, so plugins can key maps by candidate. Read-only by contract:
    only router/relay/candidates.py builds one, and plugins never write to it. Not a
    frozen dataclass because its `object.__setattr__` per field was half the cost of
    building one, and a cycle builds one per candidate it looks at.
    """

    worker: str  # the worker's stable key (its address)
    worker_id: str
    model: model_pb2.Model
    residency: Residency = worker_pb2.RESIDENCY_STATE_UNSPECIFIED
    healthy: bool = True
    breaker: Breaker = router_pb2.BREAKER_STATE_CLOSED
    breaker_allows: bool = True
    queued_tokens: int = 0  # all models on the worker: they share its compute
    running_sequences: int = 0
    in_flight: int = 0  # this router's own streams open on the worker
    # Uncached prompt tokens of this router's streams on the worker that have not reached
    # their first token: prefill work queued there that the pushed status has not shown.
    prefilling_tokens: int = 0
    memory_budget_bytes: int = 0  # 0: unknown
    memory_used_bytes: int = 0
    ttft_ms: float | None = None  # EWMA for this (worker, model); None: never measured
    inter_token_ms: float | None = None
    prefill_ms_per_token: float | None = None  # EWMA per evaluated prompt token
    tokens_per_second: float = 0.0  # the worker's recent decode throughput, all models
    # Link hashes of the prefixes the worker holds for this model: from its pushed
    # summary when `prefix_precise`, else this router's guess from its routing history.
    prefix_held: Collection[int] = frozenset()
    prefix_precise: bool = False
    # key_of(model): every plugin asks, and formatting it was a tenth of a cycle. The
    # pool passes the key it already has; left empty, it is computed once here.
    model_key: ModelKey = _NO_KEY

    def __post_init__(self) -> None:
        if not self.model_key:
            self.model_key = key_of(self.model)

    @property
    def warm(self) -> bool:
        return self.residency == worker_pb2.RESIDENCY_STATE_WARM

    @property
    def needs_load(self) -> bool:
        return self.residency not in _IN_MEMORY

    @property
    def free_memory_bytes(self) -> int | None:
        if not self.memory_budget_bytes:
            return None
        return max(0, self.memory_budget_bytes - self.memory_used_bytes)


@dataclass
class CycleState:
    """Scratch for one scheduling cycle: plugins may cache per-request work here, and
    filters record why they dropped candidates (for the error a client sees)."""

    data: dict[str, object] = field(default_factory=dict)
    rejected: dict[str, list[str]] = field(default_factory=dict)
    # The request fields the rejections blame ("" for a reason that is no field's), so
    # that a request nothing can take names the parameter to change.
    blamed: set[str] = field(default_factory=set)
    # Set by a filter that kept every candidate because none passed (healthy): a sampled
    # cycle then looks further before trusting that batch.
    failed_open: bool = False

    def reject(self, plugin: str, cand: Candidate, why: str, *, blame: str = "") -> None:
        self.blamed.add(blame)
        reasons = self.rejected.setdefault(plugin, [])
        if len(reasons) < 8:  # bounded: enough for an error message
            reasons.append(f"{cand.worker_id or cand.worker}/{cand.model_key}: {why}")

    def describe_rejections(self) -> str:
        return "; ".join(f"{p}: {', '.join(r)}" for p, r in self.rejected.items())


class CandidatePool(Protocol):
    """Candidates built on demand, so a sampled cycle builds only the few it scores.
    One pool serves one cycle and hands out one object per (worker, model) pair."""

    def __len__(self) -> int: ...

    def all(self) -> Sequence[Candidate]:
        """Every candidate, models in order, workers in pool order (the unsampled cycle)."""
        ...

    def prefix_holders(self, req: Request, limit: int) -> list[Candidate]:
        """Up to `limit` candidates holding a prefix of the request, longest first."""
        ...

    def affinity_targets(self, req: Request, count: int) -> list[Candidate]:
        """The candidates of the `count` workers ranked first for the request's session
        (rendezvous, as scorers/affinity.py ranks them); none without a session key."""
        ...

    def resident(self, rng: random.Random) -> Iterator[Candidate]:
        """Warm or loading candidates, each once, in random order."""
        ...

    @property
    def model_count(self) -> int:
        """How many models the candidates are of."""
        ...

    def shuffled(self, rng: random.Random) -> Iterator[Candidate]:
        """Every candidate once, in random order, models in turn: each model's first
        draw comes before any model's second."""
        ...


class Filter(Protocol):
    @property
    def name(self) -> str: ...

    def filter(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> Sequence[Candidate]: ...


class Scorer(Protocol):
    @property
    def name(self) -> str: ...

    def score(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> dict[Candidate, float]:
        """Each score in [0, 1]; higher is better."""
        ...


class Picker(Protocol):
    @property
    def name(self) -> str: ...

    def pick(
        self, req: Request, scored: Sequence[tuple[Candidate, float]], cycle: CycleState
    ) -> list[Candidate]:
        """All candidates, best first: the first is tried, the rest are retry order."""
        ...
