"""The residency table's rows: one `Resident` per model version, its state, and what it holds.

Only `ModelManager` mutates a Resident; everyone else reads it (status, metrics).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from modelyard.refs import ModelKey
from modelyard.v1 import common_pb2, model_pb2
from worker.admission import RequestQueue
from worker.counters import SequenceCounters
from worker.engines.base import Engine, LoadedInfo
from worker.residency.progress import LoadProgress


class ResidencyState(enum.Enum):
    COLD = "cold"
    LOADING = "loading"
    WARM = "warm"
    DRAINING = "draining"
    FAILED = "failed"


HOLDS_MEMORY = (ResidencyState.LOADING, ResidencyState.WARM, ResidencyState.DRAINING)


@dataclass
class PrefixReserve:
    """The model's prefix-cache share of its memory (worker/residency/prefix_reserve.py)."""

    token_bytes: int  # KV bytes one cached token takes
    full_tokens: int  # the limit the worker's settings give it
    tokens: int  # the limit now: less while another model needed the room

    @property
    def bytes(self) -> int:
        return self.tokens * self.token_bytes


@dataclass(eq=False)
class Resident:
    """One model version known to this worker."""

    key: ModelKey
    model: model_pb2.Model
    counters: SequenceCounters  # survives reloads: totals count since the worker started
    queue: RequestQueue
    state: ResidencyState = ResidencyState.COLD
    engine: Engine | None = None
    engine_kind: common_pb2.Engine.ValueType = common_pb2.ENGINE_UNSPECIFIED
    info: LoadedInfo | None = None
    refcount: int = 0  # requests queued or running
    last_used: float = 0.0  # wall-clock seconds
    error: str = ""
    pinned: bool = False
    keep_alive_s: float | None = None  # None: the worker default
    estimated_bytes: int = 0
    memory_bytes: int = 0  # measured after load; the estimate while loading
    prefix: PrefixReserve | None = None  # the part of memory_bytes cached prefixes may fill
    load_ms: float = 0.0
    loads: int = 0
    # Consecutive failed loads, and when (monotonic) an on-demand load may try again.
    failures: int = 0
    retry_at: float = 0.0
    load_task: asyncio.Future[None] | None = None
    unload_task: asyncio.Future[UnloadResult] | None = None
    idle_timer: asyncio.TimerHandle | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    progress: LoadProgress = field(default_factory=LoadProgress)  # while LOADING
    # Artifact files (the model's, its draft's) held in the artifact cache while loaded:
    # the cache never evicts a file in use. Released when the model goes cold.
    held_paths: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def holds_memory(self) -> bool:
        return self.state in HOLDS_MEMORY

    @property
    def evictable(self) -> bool:
        return self.state is ResidencyState.WARM and self.refcount == 0 and not self.pinned


def held_bytes(residents: Iterable[Resident], *, excluding: Resident | None = None) -> int:
    """The memory total: bytes the models in memory hold (the one place it is summed)."""
    return sum(r.memory_bytes for r in residents if r.holds_memory and r is not excluding)


class LoadResult(NamedTuple):
    resident: Resident
    loaded: bool  # False: it was already warm
    load_ms: float  # time this call waited for the load


class UnloadResult(NamedTuple):
    cancelled_requests: int
    freed_bytes: int


@dataclass(frozen=True)
class Lease:
    """A model held for one request that holds a decoding slot: it will not be evicted."""

    resident: Resident
    engine: Engine
    cold_start: bool
    load_ms: float


@dataclass(frozen=True)
class PreloadEntry:
    key: ModelKey  # resolved through the catalogue at load
    pin: bool = False
    keep_alive_s: float | None = None
