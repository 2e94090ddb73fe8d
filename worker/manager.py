"""Residency of models on this worker: one state machine per "name@version".

COLD → LOADING → WARM → DRAINING → COLD, with FAILED when a load fails (the
next load retries). Callers never touch states: they `load`, `acquire` a lease
for a generation, or `unload`. All state changes happen on the event loop
between awaits, so no lock is needed; concurrent loads of one model share one
load task.

Memory budget and LRU eviction (issue 4) plug in at `_make_room`: the estimate
is recorded before every load and the measured RSS growth after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from opentelemetry import trace

from modelyard.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelyardError,
    NotFound,
    Unavailable,
)
from modelyard.v1 import common_pb2, model_pb2
from worker import artifacts
from worker.config import WorkerSettings
from worker.engines.base import Engine, LoadedInfo, ModelSpec
from worker.status import ChangeNotifier, SequenceCounters

log = logging.getLogger(__name__)
tracer = trace.get_tracer("modelyard.worker")

# Resident memory per byte of weights (KV cache, compute buffers): refined by measurement.
MEMORY_ESTIMATE_FACTOR = 1.3

EngineFactory = Callable[[SequenceCounters], Engine]


class ResidencyState(enum.Enum):
    COLD = "cold"
    LOADING = "loading"
    WARM = "warm"
    DRAINING = "draining"
    FAILED = "failed"


def model_key(name: str, version: str) -> str:
    return f"{name}@{version}"


@dataclass(eq=False)
class Resident:
    """One model version known to this worker. Only the manager mutates it."""

    key: str
    model: model_pb2.Model
    counters: SequenceCounters  # survives reloads: totals count since the worker started
    state: ResidencyState = ResidencyState.COLD
    engine: Engine | None = None
    engine_kind: common_pb2.Engine.ValueType = common_pb2.ENGINE_UNSPECIFIED
    info: LoadedInfo | None = None
    refcount: int = 0
    last_used: float = 0.0  # wall-clock seconds
    error: str = ""
    pinned: bool = False
    keep_alive_s: float | None = None
    estimated_bytes: int = 0
    memory_bytes: int = 0  # measured after load; the estimate until then
    load_ms: float = 0.0
    load_task: asyncio.Future[None] | None = None
    unload_task: asyncio.Future[UnloadResult] | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


class LoadResult(NamedTuple):
    resident: Resident
    loaded: bool  # False: it was already warm
    load_ms: float  # time this call waited for the load


class UnloadResult(NamedTuple):
    cancelled_requests: int
    freed_bytes: int


@dataclass(frozen=True)
class Lease:
    """A model held for one request: it will not be unloaded or evicted while held."""

    resident: Resident
    engine: Engine
    cold_start: bool
    load_ms: float


def default_engines(settings: WorkerSettings) -> dict[common_pb2.Engine.ValueType, EngineFactory]:
    def llama_cpp(counters: SequenceCounters) -> Engine:
        from worker.engines.llama_cpp import LlamaCppEngine

        return LlamaCppEngine(counters, max_queued_requests=settings.max_queued_requests)

    return {common_pb2.ENGINE_LLAMA_CPP: llama_cpp}


class ModelManager:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        notifier: ChangeNotifier | None = None,
        engines: Mapping[common_pb2.Engine.ValueType, EngineFactory] | None = None,
    ) -> None:
        self.settings = settings
        self.notifier = notifier if notifier is not None else ChangeNotifier()
        self.engines = dict(engines if engines is not None else default_engines(settings))
        self._residents: dict[str, Resident] = {}

    def residents(self) -> list[Resident]:
        return list(self._residents.values())

    def get(self, name: str, version: str) -> Resident | None:
        return self._residents.get(model_key(name, version))

    async def load(
        self,
        model: model_pb2.Model,
        engine: common_pb2.Engine.ValueType = common_pb2.ENGINE_UNSPECIFIED,
        *,
        pin: bool = False,
        keep_alive_s: float | None = None,
    ) -> LoadResult:
        """Make the model warm. Idempotent; concurrent calls share one load."""
        r = self._resident_for(model)
        r.pinned = r.pinned or pin
        if keep_alive_s is not None:
            r.keep_alive_s = keep_alive_s
        if r.state is ResidencyState.WARM:
            r.last_used = time.time()
            return LoadResult(r, False, 0.0)
        if r.state is ResidencyState.DRAINING:
            raise Unavailable(f"model {r.key} is being unloaded; retry once it is cold")
        if r.state in (ResidencyState.COLD, ResidencyState.FAILED):
            kind = self._pick_engine(model, engine)
            r.model, r.state, r.error = model, ResidencyState.LOADING, ""
            r.load_task = asyncio.ensure_future(self._load(r, kind))
            # Retrieve the outcome even when every waiter was cancelled (no "never retrieved").
            r.load_task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self.notifier.notify()
        assert r.load_task is not None
        started = time.monotonic()
        # Shielded: one waiter giving up must not cancel the load the others wait for.
        await asyncio.shield(r.load_task)
        return LoadResult(r, True, (time.monotonic() - started) * 1000)

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        model: model_pb2.Model,
        *,
        load_if_cold: bool = False,
        engine: common_pb2.Engine.ValueType = common_pb2.ENGINE_UNSPECIFIED,
        load_timeout_s: float | None = None,
    ) -> AsyncIterator[Lease]:
        """Hold the model for one request; load it first if cold and `load_if_cold`.

        `load_timeout_s` bounds this request's wait for a load (DEADLINE_EXCEEDED); the
        load itself goes on for the other waiters.
        """
        key = model_key(model.name, model.version)
        r = self._residents.get(key)
        state = r.state if r is not None else ResidencyState.COLD
        cold_start, load_ms = False, 0.0
        if state is ResidencyState.DRAINING:
            raise Unavailable(f"model {key} is being unloaded on this worker; try another")
        if state is not ResidencyState.WARM:
            # A load already under way is waited for; starting one needs load_if_cold.
            if state is not ResidencyState.LOADING and not load_if_cold:
                detail = f": its last load failed: {r.error}" if r is not None and r.error else ""
                raise FailedPrecondition(
                    f"model {key} is not loaded on this worker ({state.value}{detail}); "
                    "call LoadModel first or set load_if_cold",
                    reason="MODEL_NOT_LOADED",
                    metadata={"model": key},
                )
            try:
                result = await asyncio.wait_for(self.load(model, engine), load_timeout_s)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"the deadline passed while model {key} was loading"
                ) from None
            r, cold_start, load_ms = result.resident, result.loaded, result.load_ms
        assert r is not None and r.engine is not None
        r.refcount += 1
        r.idle.clear()
        try:
            yield Lease(r, r.engine, cold_start, load_ms)
        finally:
            r.refcount -= 1
            r.last_used = time.time()
            if r.refcount == 0:
                r.idle.set()

    async def unload(self, name: str, version: str, grace_s: float = 0.0) -> UnloadResult:
        """Drain the model: refuse new requests, let in-flight ones run `grace_s`, then free it."""
        key = model_key(name, version)
        r = self._residents.get(key)
        if r is None:
            raise NotFound(f"model {key} is not on this worker", metadata={"model": key})
        if r.state is ResidencyState.LOADING and r.load_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(r.load_task)
        if r.state is ResidencyState.DRAINING and r.unload_task is not None:
            return await asyncio.shield(r.unload_task)
        if r.state is not ResidencyState.WARM:
            r.state, r.error = ResidencyState.COLD, ""
            self.notifier.notify()
            return UnloadResult(0, 0)
        r.state = ResidencyState.DRAINING
        self.notifier.notify()
        r.unload_task = asyncio.ensure_future(self._drain(r, grace_s))
        return await asyncio.shield(r.unload_task)

    async def close(self) -> None:
        """Unload every model at once (process shutdown)."""
        for r in self.residents():
            if r.state in (ResidencyState.WARM, ResidencyState.LOADING, ResidencyState.DRAINING):
                try:
                    await self.unload(r.model.name, r.model.version, 0.0)
                except ModelyardError as err:
                    log.warning("unloading %s at shutdown: %s", r.key, err.message)

    def _resident_for(self, model: model_pb2.Model) -> Resident:
        if not model.name or not model.version:
            raise InvalidArgument.for_field("model", "name and version are both required")
        key = model_key(model.name, model.version)
        r = self._residents.get(key)
        if r is None:
            r = Resident(key, model, SequenceCounters(self.notifier))
            self._residents[key] = r
        return r

    def _pick_engine(
        self, model: model_pb2.Model, requested: common_pb2.Engine.ValueType
    ) -> common_pb2.Engine.ValueType:
        runs = ", ".join(common_pb2.Engine.Name(e) for e in self.engines)
        if model.artifact.format == model_pb2.ARTIFACT_FORMAT_HF:
            # The only engine here reads GGUF; vLLM/transformers engines read HF checkpoints.
            hf_engines = [e for e in self.engines if e != common_pb2.ENGINE_LLAMA_CPP]
            if not hf_engines:
                raise FailedPrecondition(
                    f"model {model.name}@{model.version} is a Hugging Face checkpoint; "
                    f"this worker runs only {runs}, which reads GGUF"
                )
        if requested != common_pb2.ENGINE_UNSPECIFIED:
            if model.engines and requested not in model.engines:
                raise FailedPrecondition(
                    f"engine {common_pb2.Engine.Name(requested)} is not allowed for "
                    f"{model.name}@{model.version}"
                )
            if requested not in self.engines:
                raise FailedPrecondition(
                    f"this worker does not run {common_pb2.Engine.Name(requested)}; it runs {runs}"
                )
            return requested
        for kind in model.engines or self.engines:
            if kind in self.engines:
                return kind
        raise FailedPrecondition(
            f"none of the engines allowed for {model.name}@{model.version} runs on this "
            f"worker; it runs {runs}"
        )

    def _context_length(self, model: model_pb2.Model) -> int:
        cap = self.settings.context_length
        wanted = model.load_options.context_length or model.capabilities.context_length or cap
        return min(wanted, cap)

    async def _load(self, r: Resident, kind: common_pb2.Engine.ValueType) -> None:
        attributes = {
            "gen_ai.request.model": r.key,
            "modelyard.engine": common_pb2.Engine.Name(kind),
            "modelyard.artifact.uri": r.model.artifact.uri,
        }
        started = time.monotonic()
        with tracer.start_as_current_span("worker.model_load", attributes=attributes):
            try:
                engine, info, measured = await self._open(r, kind)
            except BaseException as err:
                r.state, r.memory_bytes = ResidencyState.FAILED, 0
                r.error = err.message if isinstance(err, ModelyardError) else repr(err)
                log.warning("loading %s failed: %s", r.key, r.error)
                self.notifier.notify()
                raise
        r.engine, r.engine_kind, r.info = engine, kind, info
        r.memory_bytes = measured or r.estimated_bytes
        r.load_ms = (time.monotonic() - started) * 1000
        r.state, r.last_used = ResidencyState.WARM, time.time()
        log.info(
            "loaded %s with %s in %.0f ms (context %d, ~%d MiB)",
            r.key,
            info.engine,
            r.load_ms,
            info.context_length,
            r.memory_bytes >> 20,
        )
        self.notifier.notify()

    async def _open(
        self, r: Resident, kind: common_pb2.Engine.ValueType
    ) -> tuple[Engine, LoadedInfo, int]:
        path = artifacts.local_path(r.model.artifact.uri)
        size = await asyncio.to_thread(artifacts.check_file, path)
        if r.model.artifact.sha256:
            await asyncio.to_thread(artifacts.verify_sha256, path, r.model.artifact.sha256)
        if kind == common_pb2.ENGINE_LLAMA_CPP:
            await asyncio.to_thread(artifacts.check_gguf_magic, path)
        r.estimated_bytes = r.model.resources.memory_bytes or int(size * MEMORY_ESTIMATE_FACTOR)
        r.memory_bytes = r.estimated_bytes
        self._make_room(r)
        spec = ModelSpec(
            key=r.key,
            path=path,
            context_length=self._context_length(r.model),
            threads=self.settings.threads,
            batch_size=self.settings.batch_size,
            max_parallel_sequences=r.model.load_options.max_parallel_sequences or 1,
            extra=dict(r.model.load_options.extra),
        )
        engine = self.engines[kind](r.counters)
        # RSS growth is the measured footprint; loads running side by side blur it (fine for now).
        before = _rss_bytes()
        try:
            info = await engine.load(spec)
        except ModelyardError:
            raise
        except Exception as err:
            raise FailedPrecondition(
                f"cannot load {r.key} from {path}: {err} (corrupt or unsupported model file?)",
                reason="ARTIFACT_CORRUPT",
                metadata={"path": str(path)},
            ) from err
        return engine, info, max(_rss_bytes() - before, 0)

    def _make_room(self, r: Resident) -> None:
        """Issue 4: evict idle residents (LRU, refcount 0, not pinned) until `r` fits the budget."""
        del r  # not enforced yet: every load is admitted

    async def _drain(self, r: Resident, grace_s: float) -> UnloadResult:
        cancelled = 0
        if r.refcount:
            try:
                await asyncio.wait_for(r.idle.wait(), timeout=max(grace_s, 0.0))
            except TimeoutError:
                cancelled = r.refcount
        engine = r.engine
        before = _rss_bytes()
        if engine is not None:
            await engine.unload()  # streams still running end as CANCELLED
        freed = max(before - _rss_bytes(), 0)
        r.engine, r.info, r.memory_bytes = None, None, 0
        r.state = ResidencyState.COLD
        log.info("unloaded %s (cancelled %d requests)", r.key, cancelled)
        self.notifier.notify()
        return UnloadResult(cancelled, freed)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0  # not Linux: no measurement, the estimate stands
