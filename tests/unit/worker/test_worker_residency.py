"""ModelManager's memory budget, LRU eviction, pinning, keep-alive, queueing and preload.

Models declare their size (resources.memory_bytes, a floor on the measured
footprint) so that which model fits is exact; the engines are real (tiny GGUF).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelyard.errors import DeadlineExceeded, FailedPrecondition, ResourceExhausted
from modelyard.refs import model_key
from modelyard.v1 import model_pb2
from tests.fixtures.tiny_gguf import gguf_model
from worker.catalogue import FileCatalogue
from worker.config import WorkerSettings
from worker.main import build_manager
from worker.residency import ModelManager, ResidencyState
from worker.residency.preload import preload, read_preload
from worker.status import WorkerIdentity, build_worker_status

MiB = 1 << 20


def sized(path: Path, name: str, mib: int, parallel: int = 2) -> model_pb2.Model:
    model = gguf_model(path, name=name)
    model.resources.memory_bytes = mib * MiB
    model.load_options.max_parallel_sequences = parallel
    return model


@pytest.fixture
async def manager(settings: WorkerSettings) -> AsyncIterator[ModelManager]:
    mgr = build_manager(settings.model_copy(update={"memory_budget_bytes": 100 * MiB}))
    yield mgr
    await mgr.close()


def state(mgr: ModelManager, name: str) -> ResidencyState:
    r = mgr.get(model_key(name, "1"))
    return r.state if r is not None else ResidencyState.COLD


async def test_a_model_that_can_never_fit_is_resource_exhausted_with_the_bytes(
    manager: ModelManager, tiny_gguf: Path
) -> None:
    with pytest.raises(ResourceExhausted) as err:
        await manager.load(sized(tiny_gguf, "huge", 150))
    assert err.value.reason == "MODEL_TOO_LARGE"
    assert err.value.metadata["needed_bytes"] == str(150 * MiB)
    assert err.value.metadata["available_bytes"] == str(100 * MiB)
    assert state(manager, "huge") is ResidencyState.FAILED
    await manager.load(sized(tiny_gguf, "small", 10))  # the worker keeps serving
    assert state(manager, "small") is ResidencyState.WARM


async def test_idle_models_are_evicted_least_recently_used_first(
    manager: ModelManager, tiny_gguf: Path
) -> None:
    a, b, c = (sized(tiny_gguf, n, 40) for n in "abc")
    await manager.load(a)
    await manager.load(b)
    async with manager.acquire(a):  # a is now the most recently used
        pass
    await manager.load(c)
    assert [state(manager, n) for n in "abc"] == [
        ResidencyState.WARM,
        ResidencyState.COLD,
        ResidencyState.WARM,
    ]
    assert manager.evictions_total == 1
    assert manager.used_bytes == 80 * MiB


async def test_a_model_with_a_request_in_flight_is_never_evicted(
    manager: ModelManager, tiny_gguf: Path
) -> None:
    a, b = sized(tiny_gguf, "a", 60), sized(tiny_gguf, "b", 60)
    await manager.load(a)
    async with manager.acquire(a):
        with pytest.raises(ResourceExhausted) as err:
            await manager.load(b)
        assert err.value.reason == "MEMORY_BUDGET_BUSY"
        assert err.value.metadata["needed_bytes"] == str(60 * MiB)
        assert err.value.metadata["available_bytes"] == str(40 * MiB)
        assert state(manager, "a") is ResidencyState.WARM
        # No room now says nothing about b: COLD (routers keep sending it), not FAILED
        # (routers avoid it: seen in the soak bench as UNAVAILABLE "model failed to load").
        assert state(manager, "b") is ResidencyState.COLD
    await manager.load(b)  # once idle, a makes room
    assert (state(manager, "a"), state(manager, "b")) == (ResidencyState.COLD, ResidencyState.WARM)


async def test_a_pinned_model_is_never_evicted(manager: ModelManager, tiny_gguf: Path) -> None:
    await manager.load(sized(tiny_gguf, "a", 60), pin=True)
    with pytest.raises(ResourceExhausted):
        await manager.load(sized(tiny_gguf, "b", 60))
    assert state(manager, "a") is ResidencyState.WARM


async def test_a_request_for_an_evicted_model_reloads_it(
    manager: ModelManager, tiny_gguf: Path
) -> None:
    a, b = sized(tiny_gguf, "a", 60), sized(tiny_gguf, "b", 60)
    for model in (a, b, a, b):
        async with manager.acquire(model, load_if_cold=True) as lease:
            assert lease.resident.model.name == model.name
    ra, rb = manager.get(model_key("a", "1")), manager.get(model_key("b", "1"))
    assert ra is not None and rb is not None and (ra.loads, rb.loads) == (2, 2)


async def test_keep_alive_unloads_an_idle_model_and_zero_keeps_it(
    manager: ModelManager, tiny_gguf: Path
) -> None:
    await manager.load(sized(tiny_gguf, "forever", 10), keep_alive_s=0)
    brief = sized(tiny_gguf, "brief", 10)
    await manager.load(brief, keep_alive_s=0)
    async with manager.acquire(brief):
        # The short keep-alive is set while the model is held (no race with the timer).
        await manager.load(brief, keep_alive_s=0.05)
        await asyncio.sleep(0.1)  # in use: the timer does not run while held
        assert state(manager, "brief") is ResidencyState.WARM
    deadline = time.monotonic() + 5
    while state(manager, "brief") is not ResidencyState.COLD:
        assert time.monotonic() < deadline, "the idle model was not unloaded"
        await asyncio.sleep(0.02)
    assert state(manager, "forever") is ResidencyState.WARM


async def test_a_deadline_passing_in_the_queue_is_deadline_exceeded(
    manager: ModelManager, tiny_gguf: Path
) -> None:
    model = sized(tiny_gguf, "one-slot", 10, parallel=1)
    await manager.load(model)
    async with manager.acquire(model):
        with pytest.raises(DeadlineExceeded, match="queue"):
            async with manager.acquire(model, deadline=time.monotonic() + 0.05):
                pass
        r = manager.get(model_key("one-slot", "1"))
        assert r is not None and r.refcount == 1 and r.queue.waiting == 0


async def test_load_on_demand_off_refuses_cold_models(
    settings: WorkerSettings, tiny_gguf: Path
) -> None:
    mgr = build_manager(settings.model_copy(update={"load_on_demand": False}))
    with pytest.raises(FailedPrecondition, match="load on demand is off"):
        async with mgr.acquire(sized(tiny_gguf, "a", 1), load_if_cold=True):
            pass


async def test_status_reports_budget_memory_and_queue(
    manager: ModelManager, tiny_gguf: Path
) -> None:
    model = sized(tiny_gguf, "a", 30, parallel=1)
    await manager.load(model)
    async with manager.acquire(model, tokens=5):
        waiter = asyncio.ensure_future(_hold(manager, model, tokens=17))
        await asyncio.sleep(0.01)
        status = build_worker_status(WorkerIdentity("w", "here"), manager)
        assert status.memory_budget_bytes == 100 * MiB
        assert status.memory_used_bytes == 30 * MiB
        assert (status.queued_requests, status.queued_tokens) == (1, 17)
        assert status.models[0].in_flight == 2
    await waiter


async def _hold(manager: ModelManager, model: model_pb2.Model, tokens: int) -> None:
    async with manager.acquire(model, tokens=tokens):
        pass


async def test_preload_names_models_by_reference_and_loads_the_catalogues_record(
    settings: WorkerSettings, tiny_gguf: Path, tmp_path: Path
) -> None:
    manager = build_manager(settings)
    real = gguf_model(tiny_gguf)
    catalogue = FileCatalogue(
        [
            gguf_model(tiny_gguf, name="p"),
            gguf_model(tiny_gguf, name="q"),
            gguf_model(tiny_gguf, name="r"),
            model_pb2.Model(
                name="broken",
                version="1",
                artifact=model_pb2.Artifact(uri="file:///nowhere.gguf", sha256="ab" * 32),
            ),
        ]
    )
    path = tmp_path / "preload.yaml"
    path.write_text(
        "models:\n"
        "  - model: p@1\n"
        "    pin: true\n"
        "    keep_alive_s: 30\n"
        "  - q@1\n"
        # The older form: only its name and version count, never its artifact.
        "  - {name: r, version: '1', artifact: {uri: 'file:///etc/hostname'}}\n"
        "  - broken@1\n"
        "  - ghost@1\n"
    )
    entries = read_preload(path)
    assert [(e.key, e.pin, e.keep_alive_s) for e in entries] == [
        ("p@1", True, 30.0),
        ("q@1", False, None),
        ("r@1", False, None),
        ("broken@1", False, None),
        ("ghost@1", False, None),
    ]
    await preload(manager, catalogue.resolve, entries)
    assert state(manager, "p") is state(manager, "q") is ResidencyState.WARM
    r = manager.get(model_key("r", "1"))
    assert r is not None and r.state is ResidencyState.WARM
    assert r.model.artifact.uri == real.artifact.uri
    assert state(manager, "broken") is ResidencyState.FAILED
    assert manager.get(model_key("ghost", "1")) is None  # NOT_FOUND: logged, nothing touched
    p = manager.get(model_key("p", "1"))
    assert p is not None and p.pinned
    await manager.close()
