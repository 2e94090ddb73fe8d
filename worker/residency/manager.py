"""Residency of models on this worker: one state machine per model version.

COLD -> LOADING -> WARM -> DRAINING -> COLD, with FAILED when a load fails (the
next load retries). Callers never touch states: they `load`, `acquire` a lease
for a generation, or `unload`. State changes are made by this class only, each
one synchronously on the event loop (no await between reading a state and
writing the next), and `_lock` serializes every change of what memory holds:
a load's budget check, its evictions and its engine start run under it, so each
load's check and measured footprint see only its own memory. Concurrent loads of
one model share one load task.

Memory: before a load the model's estimate must fit the budget next to the
models in memory; cached prefixes give up their reserve first (`prefix_reserve`,
grown back once room returns), then idle warm models (no request queued or
running, not pinned) are evicted least recently used first
(`eviction.plan_eviction`). A model that can never fit, or one that would need
a busy or pinned model evicted, is RESOURCE_EXHAUSTED at once with the bytes
needed and available: the router then tries another worker instead of this
request waiting for memory that may not come back within its deadline. After the
load (and its warm-up) the footprint is the measured RSS growth, or the estimate
where that is larger (the growth under-reads when the allocator reuses memory an
earlier unload freed).

Collaborators are given, not found: the `ModelLoader` (artifact store and engine
factories inside it) and the `ChangeNotifier` status watchers wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opentelemetry import trace

from modelyard.errors import ModelyardError, NotFound, Unavailable
from modelyard.refs import ModelKey, key_of
from modelyard.v1 import common_pb2, model_pb2
from worker.admission import RequestQueue, within
from worker.counters import ChangeNotifier, SequenceCounters
from worker.residency.admissible import check_admissible
from worker.residency.backoff import note_failure, note_success
from worker.residency.engine_choice import EngineKind, pick_engine
from worker.residency.eviction import Evict, Holder, plan_eviction, refusal
from worker.residency.keep_alive import KeepAlive
from worker.residency.loader import ModelLoader, Opened
from worker.residency.memory import GPU_ENGINES, default_budget_bytes, rss_bytes, trim_heap
from worker.residency.prefix_reserve import grow_back, reclaimable_bytes, shrink
from worker.residency.progress import LoadPhase, ProgressPublisher
from worker.residency.state import (
    Lease,
    LoadResult,
    ResidencyState,
    Resident,
    UnloadResult,
    held_bytes,
)
from worker.residency.stats import LoadStats

if TYPE_CHECKING:
    from worker.config import WorkerSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("modelyard.worker")


class ModelManager:
    def __init__(
        self,
        settings: WorkerSettings,
        loader: ModelLoader,
        *,
        notifier: ChangeNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.loader = loader
        self.notifier = notifier if notifier is not None else ChangeNotifier()
        self.budget_bytes = settings.memory_budget_bytes or default_budget_bytes(
            settings.memory_budget_fraction,
            gpu=not GPU_ENGINES.isdisjoint(self.engines),  # CUDA engines hold models there
        )
        self.stats = LoadStats()
        self._residents: dict[ModelKey, Resident] = {}
        self._lock = asyncio.Lock()
        self._keep_alive = KeepAlive(settings.keep_alive_s, self._idle_expired)

    @property
    def engines(self) -> Sequence[EngineKind]:
        return list(self.loader.engines)

    def residents(self) -> list[Resident]:
        return list(self._residents.values())

    def get(self, key: ModelKey) -> Resident | None:
        return self._residents.get(key)

    @property
    def evictions_total(self) -> int:
        return self.stats.evictions

    @property
    def used_bytes(self) -> int:
        return held_bytes(self._residents.values())

    def keep_alive_of(self, r: Resident) -> float:
        return self._keep_alive.of(r)

    async def load(
        self,
        model: model_pb2.Model,
        engine: EngineKind = common_pb2.ENGINE_UNSPECIFIED,
        *,
        pin: bool = False,
        keep_alive_s: float | None = None,
    ) -> LoadResult:
        """Make the model warm. Idempotent; concurrent calls share one load.

        `model` is the catalogue's record (worker/catalogue), never a request's copy;
        a model version already known here keeps the record it was first given."""
        r = self._resident_for(model)
        if pin and not r.pinned:
            r.pinned = True
            self._keep_alive.cancel(r)
            self.notifier.notify()
        if keep_alive_s is not None:
            r.keep_alive_s = keep_alive_s
        if r.state is ResidencyState.WARM:
            r.last_used = time.time()
            self._keep_alive.arm(r)
            return LoadResult(r, False, 0.0)
        if r.state is ResidencyState.DRAINING:
            raise Unavailable(f"model {r.key} is being unloaded; retry once it is cold")
        if r.state in (ResidencyState.COLD, ResidencyState.FAILED):
            kind = pick_engine(r.model, engine, self.loader.engines)
            r.state, r.error = ResidencyState.LOADING, ""
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
        engine: EngineKind = common_pb2.ENGINE_UNSPECIFIED,
        priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_NORMAL,
        tokens: int = 0,
        deadline: float | None = None,
    ) -> AsyncIterator[Lease]:
        """Queue one request on the model, load it if cold, and hold a decoding slot.

        `model` is the catalogue's record, as for `load`.

        `tokens` (prompt + max_tokens) counts against the queue's token bound. The
        request waits in the model's priority queue while the model loads and while
        every slot is busy; `deadline` (monotonic seconds) bounds both waits
        (DEADLINE_EXCEEDED). A full queue is RESOURCE_EXHAUSTED at once.
        """
        key = key_of(model)
        await check_admissible(
            self._residents.get(key),
            key,
            load_if_cold,
            deadline,
            load_on_demand=self.settings.load_on_demand,
            rejected=self.stats.rejected,
        )
        r = self._resident_for(model)
        ticket = r.queue.submit(priority, tokens)  # RESOURCE_EXHAUSTED before any load
        self._hold(r)
        try:
            cold_start, load_ms = False, 0.0
            if r.state is not ResidencyState.WARM:
                result = await within(deadline, self.load(model, engine), f"{r.key} was loading")
                cold_start, load_ms = result.loaded, result.load_ms
            await r.queue.wait(ticket, deadline)
            if r.engine is None:  # unloaded while this request waited for its slot
                raise Unavailable(f"model {r.key} was unloaded before this request ran")
            yield Lease(r, r.engine, cold_start, load_ms)
        finally:
            r.queue.leave(ticket)
            self._release(r)

    async def unload(self, key: ModelKey, grace_s: float = 0.0) -> UnloadResult:
        """Drain the model: refuse new requests, let in-flight ones run `grace_s`, then free it."""
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

    async def close(self) -> None:
        """Unload every model at once (process shutdown)."""
        for r in self.residents():
            self._keep_alive.cancel(r)
            if r.holds_memory:
                try:
                    await self.unload(r.key, 0.0)
                except ModelyardError as err:
                    log.warning("unloading %s at shutdown: %s", r.key, err.message)

    # -- admission and references ----------------------------------------------------

    def _hold(self, r: Resident) -> None:
        r.refcount += 1
        r.idle.clear()
        self._keep_alive.cancel(r)

    def _release(self, r: Resident) -> None:
        r.refcount -= 1
        r.last_used = time.time()
        if r.refcount == 0:
            r.idle.set()
            self._keep_alive.arm(r)

    def _idle_expired(self, r: Resident) -> None:
        if r.evictable:
            log.info("unloading %s: idle for %.1f s", r.key, self._keep_alive.of(r))
            self._start_drain(r, 0.0)

    def _resident_for(self, model: model_pb2.Model) -> Resident:
        key = key_of(model)
        r = self._residents.get(key)
        if r is None:
            counters = SequenceCounters(self.notifier)
            queue = RequestQueue(
                key,
                counters,
                max_requests=self.settings.max_queued_requests,
                max_tokens=self.settings.max_queued_tokens,
            )
            r = self._residents[key] = Resident(key, model, counters, queue)
        return r

    # -- loading -----------------------------------------------------------------------

    async def _load(self, r: Resident, kind: EngineKind) -> None:
        attributes = {
            "gen_ai.request.model": r.key,
            "modelyard.engine": common_pb2.Engine.Name(kind),
            # The scheme only: a path is the host's business and a URL may carry a credential.
            "modelyard.artifact.scheme": urlsplit(r.model.artifact.uri).scheme or "file",
        }
        started = time.monotonic()
        with tracer.start_as_current_span("worker.model_load", attributes=attributes):
            try:
                opened = await self._open(r, kind)
            except BaseException as err:
                self._load_failed(r, err, time.monotonic() - started)
                raise
        r.engine, r.engine_kind, r.info = opened.engine, kind, opened.info
        # The measured RSS growth, floored by the estimate: growth under-reads when the
        # allocator reuses pages an earlier unload freed (seen on the second load of a
        # swapped model), and a budget that trusts an under-read overcommits.
        r.memory_bytes = max(opened.measured_bytes, r.estimated_bytes)
        r.load_ms = (time.monotonic() - started) * 1000
        r.loads += 1
        note_success(r)
        self.stats.loads["loaded"] += 1
        self.stats.durations.observe(r.load_ms / 1000)
        r.state, r.last_used = ResidencyState.WARM, time.time()
        r.queue.set_slots(self.loader.slots(r.model, opened.info))
        log.info(
            "loaded %s with %s in %.0f ms (context %d, estimated %d MiB, measured %d MiB)",
            r.key,
            opened.info.engine,
            r.load_ms,
            opened.info.context_length,
            r.estimated_bytes >> 20,
            opened.measured_bytes >> 20,
        )
        self._keep_alive.arm(r)
        self.notifier.notify()

    def _load_failed(self, r: Resident, err: BaseException, seconds: float) -> None:
        self.stats.loads["failed"] += 1
        self.stats.durations.observe(seconds)
        r.memory_bytes = 0
        r.error = err.message if isinstance(err, ModelyardError) else repr(err)
        note_failure(r, err)  # FAILED, or COLD when only room or time was missing
        log.warning("loading %s failed: %s", r.key, r.error)
        r.queue.fail_waiting(err if isinstance(err, ModelyardError) else Unavailable(r.error))
        self.notifier.notify()

    async def _open(self, r: Resident, kind: EngineKind) -> Opened:
        progress = ProgressPublisher(r.progress, self.notifier)
        try:
            fetched = await self.loader.fetch(r.key, r.model, kind, self._known_model, progress)
            try:
                async with self._lock:
                    needed = await self.loader.needed_bytes(r.model, fetched.path)
                    r.estimated_bytes, r.prefix = needed.total, needed.prefix
                    await self._make_room(r)
                    r.memory_bytes = r.estimated_bytes
                    progress.phase(LoadPhase.LOAD)
                    spec = self.loader.spec(r.key, r.model, kind, fetched)
                    opened = await self.loader.open(kind, spec, r.counters, progress)
            except BaseException:
                self.loader.release(fetched.paths)
                raise
            self.loader.release(r.held_paths)  # a FAILED load's leftovers, if any
            r.held_paths = fetched.paths
            return opened
        finally:
            progress.finish()

    def _known_model(self, ref: str) -> model_pb2.Model | None:
        """The model a draft reference ("name@version" in load options) names, if known here."""
        known = self._residents.get(ModelKey(ref))
        return known.model if known is not None else None

    async def _make_room(self, r: Resident) -> None:
        """Under `_lock`: shrink prefix caches, then evict idle models (LRU first), until
        `r`'s estimate fits the budget."""
        others: dict[str, Resident] = {
            o.key: o for o in self._residents.values() if o.holds_memory and o is not r
        }
        holders = [
            Holder(o.key, o.memory_bytes, o.last_used, o.evictable, reclaimable_bytes(o))
            for o in others.values()
        ]
        plan = plan_eviction(r.estimated_bytes, self.budget_bytes, holders)
        if not isinstance(plan, Evict):
            available = self.budget_bytes - held_bytes(others.values())
            raise refusal(plan, r.key, r.estimated_bytes, self.budget_bytes, available)
        for key, nbytes in plan.shrink:
            await shrink(others[key], nbytes)
        for victim in (others[key] for key in plan.victims):
            log.info(
                "evicting %s (idle since %.0f) to load %s", victim.key, victim.last_used, r.key
            )
            self.stats.evictions += 1
            await asyncio.shield(self._start_drain(victim, 0.0))

    # -- unloading ---------------------------------------------------------------------

    def _start_drain(self, r: Resident, grace_s: float) -> asyncio.Future[UnloadResult]:
        if r.unload_task is not None and r.state is ResidencyState.DRAINING:
            return r.unload_task
        self._keep_alive.cancel(r)
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
                async with asyncio.timeout(max(grace_s, 0.0)):
                    await r.idle.wait()
            except TimeoutError:
                cancelled = r.refcount
        r.queue.set_slots(0)
        r.queue.fail_waiting(Unavailable(f"model {r.key} was unloaded before this request ran"))
        engine = r.engine
        before = rss_bytes()
        if engine is not None:
            await engine.unload()  # streams still running end as CANCELLED
            await asyncio.to_thread(trim_heap)
        freed = max(before - rss_bytes(), 0)
        r.engine, r.info, r.memory_bytes = None, None, 0
        self.loader.release(r.held_paths)
        r.held_paths = []
        r.state = ResidencyState.COLD
        log.info("unloaded %s (freed %d MiB, cancelled %d requests)", r.key, freed >> 20, cancelled)
        self.notifier.notify()
        # After any load that waits for the lock now: it gets the room first.
        asyncio.ensure_future(self._grow_back()).add_done_callback(
            lambda t: t.cancelled() or t.exception()
        )
        return UnloadResult(cancelled, freed)

    async def _grow_back(self) -> None:
        """Room came back: prefix caches shrunk for another model take what fits again."""
        async with self._lock:
            if await grow_back(self._residents.values(), self.budget_bytes - self.used_bytes):
                self.notifier.notify()  # the status shows each cache's limit
