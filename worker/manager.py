"""Residency of models on this worker: one state machine per "name@version".

COLD -> LOADING -> WARM -> DRAINING -> COLD, with FAILED when a load fails (the
next load retries). Callers never touch states: they `load`, `acquire` a lease
for a generation, or `unload`. State changes happen on the event loop between
awaits; concurrent loads of one model share one load task, and loads of
different models take turns (`_load_lock`) so that each one's budget check and
its measured footprint see only its own memory.

Memory: before a load the model's estimate (worker.memory) must fit the budget
next to the models in memory; idle warm models (no request queued or running,
not pinned) are evicted least recently used first to make room. A model that
can never fit, or one that would need a busy or pinned model evicted, is
RESOURCE_EXHAUSTED at once with the bytes needed and available: the router
then tries another worker instead of this request waiting for memory that may
not come back within its deadline. After the load (and its warm-up) the
footprint is the measured RSS growth, or the estimate where that is larger (the
growth under-reads when the allocator reuses memory an earlier unload freed).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

from opentelemetry import trace

from modelyard.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelyardError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from modelyard.v1 import common_pb2, model_pb2
from worker import artifacts, memory
from worker.artifact_uri import parse_uri
from worker.config import WorkerSettings
from worker.engines import EngineFactory, available_engines
from worker.engines.base import Engine, EngineRequest, LoadedInfo, ModelSpec, SamplingConfig
from worker.load_options import engine_extra, is_artifact_uri
from worker.load_progress import LoadPhase, LoadProgress, ProgressPublisher
from worker.load_stats import LoadStats
from worker.scheduler import RequestQueue
from worker.status import ChangeNotifier, SequenceCounters

log = logging.getLogger(__name__)
tracer = trace.get_tracer("modelyard.worker")

WARM_UP_PROMPT = "Hello"

T = TypeVar("T")

__all__ = [
    "EngineFactory",
    "Lease",
    "LoadResult",
    "ModelManager",
    "ResidencyState",
    "Resident",
    "UnloadResult",
    "model_key",
]


class ResidencyState(enum.Enum):
    COLD = "cold"
    LOADING = "loading"
    WARM = "warm"
    DRAINING = "draining"
    FAILED = "failed"


HOLDS_MEMORY = (ResidencyState.LOADING, ResidencyState.WARM, ResidencyState.DRAINING)


def model_key(name: str, version: str) -> str:
    return f"{name}@{version}"


@dataclass(eq=False)
class Resident:
    """One model version known to this worker. Only the manager mutates it."""

    key: str
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
    load_ms: float = 0.0
    loads: int = 0
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
    def evictable(self) -> bool:
        return self.state is ResidencyState.WARM and self.refcount == 0 and not self.pinned


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


def default_engines(settings: WorkerSettings) -> dict[common_pb2.Engine.ValueType, EngineFactory]:
    return dict(available_engines(settings))


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
        self.budget_bytes = settings.memory_budget_bytes or memory.default_budget_bytes(
            settings.memory_budget_fraction,
            gpu=common_pb2.ENGINE_VLLM in self.engines,  # vLLM's CUDA build holds models there
        )
        self.stats = LoadStats()
        self._residents: dict[str, Resident] = {}
        self._load_lock = asyncio.Lock()
        self._background: set[asyncio.Future[object]] = set()

    def residents(self) -> list[Resident]:
        return list(self._residents.values())

    def get(self, name: str, version: str) -> Resident | None:
        return self._residents.get(model_key(name, version))

    @property
    def evictions_total(self) -> int:
        return self.stats.evictions

    @property
    def used_bytes(self) -> int:
        return sum(r.memory_bytes for r in self._residents.values() if r.state in HOLDS_MEMORY)

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
        if pin and not r.pinned:
            r.pinned = True
            self._cancel_idle_timer(r)
            self.notifier.notify()
        if keep_alive_s is not None:
            r.keep_alive_s = keep_alive_s
        if r.state is ResidencyState.WARM:
            r.last_used = time.time()
            self._arm_idle_timer(r)
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
        priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_NORMAL,
        tokens: int = 0,
        deadline: float | None = None,
    ) -> AsyncIterator[Lease]:
        """Queue one request on the model, load it if cold, and hold a decoding slot.

        `tokens` (prompt + max_tokens) counts against the queue's token bound. The
        request waits in the model's priority queue while the model loads and while
        every slot is busy; `deadline` (monotonic seconds) bounds both waits
        (DEADLINE_EXCEEDED). A full queue is RESOURCE_EXHAUSTED at once.
        """
        key = model_key(model.name, model.version)
        r = self._residents.get(key)
        if r is not None and r.state is ResidencyState.DRAINING:
            if not (load_if_cold and r.unload_task is not None):
                self.stats.rejected[key, "draining"] += 1
                raise Unavailable(f"model {key} is being unloaded on this worker; try another")
            # Evicted a moment ago to make room for another model: reload it after.
            await _until(deadline, asyncio.shield(r.unload_task), f"{key} was unloading")
        state = r.state if r is not None else ResidencyState.COLD
        loadable = load_if_cold and self.settings.load_on_demand
        if state not in (ResidencyState.WARM, ResidencyState.LOADING) and not loadable:
            detail = f": its last load failed: {r.error}" if r is not None and r.error else ""
            how = "set load_if_cold" if self.settings.load_on_demand else "(load on demand is off)"
            self.stats.rejected[key, "not_loaded"] += 1
            raise FailedPrecondition(
                f"model {key} is not loaded on this worker ({state.value}{detail}); "
                f"call LoadModel first or {how}",
                reason="MODEL_NOT_LOADED",
                metadata={"model": key},
            )
        r = self._resident_for(model)
        ticket = r.queue.submit(priority, tokens)  # RESOURCE_EXHAUSTED before any load
        self._hold(r)
        try:
            cold_start, load_ms = False, 0.0
            if r.state is not ResidencyState.WARM:
                result = await _until(deadline, self.load(model, engine), f"{key} was loading")
                cold_start, load_ms = result.loaded, result.load_ms
            await r.queue.wait(ticket, deadline)
            if r.engine is None:  # unloaded while this request waited for its slot
                raise Unavailable(f"model {key} was unloaded before this request ran")
            yield Lease(r, r.engine, cold_start, load_ms)
        finally:
            r.queue.leave(ticket)
            self._release(r)

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
        return await asyncio.shield(self._start_drain(r, grace_s))

    async def preload(self, entries: Sequence[PreloadEntry]) -> None:
        """Load each entry in turn; a failure is logged and the others still load."""
        for entry in entries:
            try:
                await self.load(entry.model, pin=entry.pin, keep_alive_s=entry.keep_alive_s)
            except ModelyardError as err:
                log.warning(
                    "preloading %s failed: %s",
                    model_key(entry.model.name, entry.model.version),
                    err.message,
                )

    async def close(self) -> None:
        """Unload every model at once (process shutdown)."""
        for r in self.residents():
            self._cancel_idle_timer(r)
            if r.state in HOLDS_MEMORY:
                try:
                    await self.unload(r.model.name, r.model.version, 0.0)
                except ModelyardError as err:
                    log.warning("unloading %s at shutdown: %s", r.key, err.message)

    # -- references and keep-alive ----------------------------------------------------

    def _hold(self, r: Resident) -> None:
        r.refcount += 1
        r.idle.clear()
        self._cancel_idle_timer(r)

    def _release(self, r: Resident) -> None:
        r.refcount -= 1
        r.last_used = time.time()
        if r.refcount == 0:
            r.idle.set()
            self._arm_idle_timer(r)

    def keep_alive_of(self, r: Resident) -> float:
        return r.keep_alive_s if r.keep_alive_s is not None else self.settings.keep_alive_s

    def _arm_idle_timer(self, r: Resident) -> None:
        self._cancel_idle_timer(r)
        keep = self.keep_alive_of(r)
        if keep > 0 and r.evictable:
            r.idle_timer = asyncio.get_running_loop().call_later(keep, self._idle_expired, r)

    @staticmethod
    def _cancel_idle_timer(r: Resident) -> None:
        if r.idle_timer is not None:
            r.idle_timer.cancel()
            r.idle_timer = None

    def _idle_expired(self, r: Resident) -> None:
        r.idle_timer = None
        if r.evictable:
            log.info("unloading %s: idle for %.1f s", r.key, self.keep_alive_of(r))
            self._start_drain(r, 0.0)

    # -- loading -------------------------------------------------------------------------

    def _resident_for(self, model: model_pb2.Model) -> Resident:
        if not model.name or not model.version:
            raise InvalidArgument.for_field("model", "name and version are both required")
        key = model_key(model.name, model.version)
        r = self._residents.get(key)
        if r is None:
            counters = SequenceCounters(self.notifier)
            queue = RequestQueue(
                key,
                counters,
                max_requests=self.settings.max_queued_requests,
                max_tokens=self.settings.max_queued_tokens,
            )
            r = Resident(key, model, counters, queue)
            self._residents[key] = r
        return r

    def _pick_engine(
        self, model: model_pb2.Model, requested: common_pb2.Engine.ValueType
    ) -> common_pb2.Engine.ValueType:
        runs = ", ".join(common_pb2.Engine.Name(e) for e in self.engines)
        if model.artifact.format == model_pb2.ARTIFACT_FORMAT_HF:
            # llama.cpp reads only GGUF; vLLM/transformers engines read HF checkpoints.
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

    def _parallel(self, model: model_pb2.Model) -> int:
        return model.load_options.max_parallel_sequences or self.settings.max_parallel_sequences

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
                self.stats.loads["failed"] += 1
                self.stats.durations.observe(time.monotonic() - started)
                r.state, r.memory_bytes = ResidencyState.FAILED, 0
                r.error = err.message if isinstance(err, ModelyardError) else repr(err)
                log.warning("loading %s failed: %s", r.key, r.error)
                r.queue.fail_waiting(
                    err if isinstance(err, ModelyardError) else Unavailable(r.error)
                )
                self.notifier.notify()
                raise
        r.engine, r.engine_kind, r.info = engine, kind, info
        # The measured RSS growth, floored by the estimate: growth under-reads when the
        # allocator reuses pages an earlier unload freed (seen on the second load of a
        # swapped model), and a budget that trusts an under-read overcommits.
        r.memory_bytes = max(measured, r.estimated_bytes)
        r.load_ms = (time.monotonic() - started) * 1000
        r.loads += 1
        self.stats.loads["loaded"] += 1
        self.stats.durations.observe(r.load_ms / 1000)
        r.state, r.last_used = ResidencyState.WARM, time.time()
        r.queue.set_slots(self._parallel(r.model))
        log.info(
            "loaded %s with %s in %.0f ms (context %d, estimated %d MiB, measured %d MiB)",
            r.key,
            info.engine,
            r.load_ms,
            info.context_length,
            r.estimated_bytes >> 20,
            measured >> 20,
        )
        self._arm_idle_timer(r)
        self.notifier.notify()

    async def _open(
        self, r: Resident, kind: common_pb2.Engine.ValueType
    ) -> tuple[Engine, LoadedInfo, int]:
        progress = ProgressPublisher(r.progress, self.notifier)
        try:
            held = await self._fetch(r, kind, progress)
            try:
                opened = await self._open_engine(r, kind, held, progress)
            except BaseException:
                _release(held)
                raise
            _release(r.held_paths)  # a FAILED load's leftovers, if any
            r.held_paths = held
            return opened
        finally:
            progress.finish()

    async def _fetch(
        self, r: Resident, kind: common_pb2.Engine.ValueType, progress: ProgressPublisher
    ) -> list[Path]:
        """The artifact's verified path (then its draft model's, if any), held in the cache."""
        progress.phase(LoadPhase.FETCH if _is_remote(r.model.artifact.uri) else LoadPhase.VERIFY)
        path = await artifacts.fetch(r.model.artifact, progress=progress.bytes, retain=True)
        held = [path]
        draft = r.model.load_options.draft_model
        if not draft:
            return held
        if kind != common_pb2.ENGINE_VLLM:
            log.info("%s: draft model %s ignored (speculative decoding is vLLM's)", r.key, draft)
            return held
        try:
            artifact = self._draft_artifact(r, draft)
            progress.phase(LoadPhase.FETCH if _is_remote(artifact.uri) else LoadPhase.VERIFY)
            held.append(await artifacts.fetch(artifact, progress=progress.bytes, retain=True))
        except BaseException:
            _release(held)
            raise
        return held

    def _draft_artifact(self, r: Resident, draft: str) -> model_pb2.Artifact:
        if is_artifact_uri(draft):
            return model_pb2.Artifact(uri=draft)
        known = self._residents.get(draft)
        if known is None:
            raise FailedPrecondition(
                f"{r.key} names draft model {draft!r}, which this worker cannot resolve: a "
                "draft model must be registered and known to this worker (load it, or send it "
                "a request, first), or load_options.draft_model must be an artifact URI the "
                "worker can fetch (file://, http(s)://, s3://, hf://)",
                reason="DRAFT_MODEL_UNRESOLVED",
                metadata={"model": r.key, "draft_model": draft},
            )
        return known.model.artifact

    async def _open_engine(
        self,
        r: Resident,
        kind: common_pb2.Engine.ValueType,
        held: list[Path],
        progress: ProgressPublisher,
    ) -> tuple[Engine, LoadedInfo, int]:
        path = held[0]
        if kind == common_pb2.ENGINE_LLAMA_CPP:
            await asyncio.to_thread(artifacts.check_gguf_magic, path)
        context_length = self._context_length(r.model)
        async with self._load_lock:
            estimate = await asyncio.to_thread(memory.estimate, path, context_length)
            r.estimated_bytes = r.model.resources.memory_bytes or estimate.total
            await self._make_room(r)
            r.memory_bytes = r.estimated_bytes
            progress.phase(LoadPhase.LOAD)
            draft_sha = ""
            if len(held) > 1 and (known := self._residents.get(r.model.load_options.draft_model)):
                draft_sha = known.model.artifact.sha256
            spec = ModelSpec(
                key=r.key,
                path=path,
                context_length=context_length,
                threads=self.settings.threads,
                batch_size=self.settings.batch_size,
                max_parallel_sequences=self._parallel(r.model),
                token_delay_s=self.settings.token_delay_ms / 1000,
                extra=engine_extra(
                    r.model,
                    kind,
                    draft=held[1] if len(held) > 1 else None,
                    draft_sha256=draft_sha,
                ),
            )
            engine = self.engines[kind](r.counters)
            before = memory.rss_bytes()
            try:
                info = await engine.load(spec)
                progress.phase(LoadPhase.WARM_UP)
                await _warm_up(engine)
            except BaseException as err:
                with contextlib.suppress(Exception):
                    await engine.unload()
                if isinstance(err, (ModelyardError, asyncio.CancelledError)):
                    raise
                if not isinstance(err, Exception):
                    raise
                raise FailedPrecondition(
                    f"cannot load {r.key} from {path}: {err} (corrupt or unsupported model file?)",
                    reason="ARTIFACT_CORRUPT",
                    metadata={"path": str(path)},
                ) from err
            return engine, info, max(memory.rss_bytes() - before, 0)

    async def _make_room(self, r: Resident) -> None:
        """Evict idle models, least recently used first, until `r`'s estimate fits the budget."""
        need = r.estimated_bytes
        if need > self.budget_bytes:
            raise self._exhausted(
                r,
                f"{r.key} needs ~{need >> 20} MiB but the worker's whole memory budget "
                f"is {self.budget_bytes >> 20} MiB: it can never be loaded here",
                reason="MODEL_TOO_LARGE",
            )
        others = [o for o in self._residents.values() if o is not r and o.state in HOLDS_MEMORY]
        used = sum(o.memory_bytes for o in others)
        if used + need <= self.budget_bytes:
            return
        victims: list[Resident] = []
        for candidate in sorted((o for o in others if o.evictable), key=lambda o: o.last_used):
            victims.append(candidate)
            used -= candidate.memory_bytes
            if used + need <= self.budget_bytes:
                break
        if used + need > self.budget_bytes:
            busy = [o.key for o in others if not o.evictable]
            raise self._exhausted(
                r,
                f"{r.key} needs ~{need >> 20} MiB; {(self.budget_bytes - used) >> 20} MiB "
                f"would be free after evicting every idle model, and {', '.join(busy)} "
                "cannot be evicted (requests in flight, loading or pinned)",
                reason="MEMORY_BUDGET_BUSY",
            )
        for victim in victims:
            log.info(
                "evicting %s (idle since %.0f) to load %s", victim.key, victim.last_used, r.key
            )
            self.stats.evictions += 1
            await asyncio.shield(self._start_drain(victim, 0.0))

    def _exhausted(self, r: Resident, message: str, *, reason: str) -> ResourceExhausted:
        available = self.budget_bytes - sum(
            o.memory_bytes
            for o in self._residents.values()
            if o is not r and o.state in HOLDS_MEMORY
        )
        return ResourceExhausted(
            message,
            reason=reason,
            metadata={
                "model": r.key,
                "needed_bytes": str(r.estimated_bytes),
                "available_bytes": str(max(available, 0)),
                "budget_bytes": str(self.budget_bytes),
            },
            retry_after_s=None if reason == "MODEL_TOO_LARGE" else 1.0,
        )

    # -- unloading -----------------------------------------------------------------------

    def _start_drain(self, r: Resident, grace_s: float) -> asyncio.Future[UnloadResult]:
        if r.unload_task is not None and r.state is ResidencyState.DRAINING:
            return r.unload_task
        self._cancel_idle_timer(r)
        r.state = ResidencyState.DRAINING
        self.notifier.notify()
        task = asyncio.ensure_future(self._drain(r, grace_s))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        r.unload_task = task
        return task

    async def _drain(self, r: Resident, grace_s: float) -> UnloadResult:
        cancelled = 0
        if r.refcount:
            try:
                await asyncio.wait_for(r.idle.wait(), timeout=max(grace_s, 0.0))
            except TimeoutError:
                cancelled = r.refcount
        r.queue.set_slots(0)
        r.queue.fail_waiting(Unavailable(f"model {r.key} was unloaded before this request ran"))
        engine = r.engine
        before = memory.rss_bytes()
        if engine is not None:
            await engine.unload()  # streams still running end as CANCELLED
            await asyncio.to_thread(memory.trim_heap)
        freed = max(before - memory.rss_bytes(), 0)
        r.engine, r.info, r.memory_bytes = None, None, 0
        _release(r.held_paths)
        r.held_paths = []
        r.state = ResidencyState.COLD
        log.info("unloaded %s (freed %d MiB, cancelled %d requests)", r.key, freed >> 20, cancelled)
        self.notifier.notify()
        return UnloadResult(cancelled, freed)


@dataclass(frozen=True)
class PreloadEntry:
    model: model_pb2.Model
    pin: bool = False
    keep_alive_s: float | None = None


def _is_remote(uri: str) -> bool:
    try:
        return parse_uri(uri).is_remote
    except ModelyardError:
        return False  # the fetch reports the bad URI


def _release(paths: Sequence[Path]) -> None:
    store = artifacts.default_store()
    for path in paths:
        store.release(path)


async def _warm_up(engine: Engine) -> None:
    """One greedy token before the model is marked warm: first requests pay no first-use cost."""
    request = EngineRequest(
        "warm-up", prompt=WARM_UP_PROMPT, sampling=SamplingConfig(temperature=0.0), max_tokens=1
    )
    stream = engine.generate(request)
    try:
        async for _ in stream:
            pass
    finally:
        await stream.aclose()


async def _until(deadline: float | None, awaitable: Awaitable[T], doing: str) -> T:
    """Await within `deadline` (monotonic seconds); DEADLINE_EXCEEDED saying what it waited for."""
    if deadline is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, max(deadline - time.monotonic(), 0.0))
    except TimeoutError:
        raise DeadlineExceeded(f"the deadline passed while {doing}") from None
