"""The worker pool follows WatchStatus: workers going away and coming back, discovery."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from modelyard.prefix import SCHEME as PREFIX_SCHEME
from modelyard.server import start_server
from modelyard.v1 import model_pb2, worker_pb2, worker_pb2_grpc
from router.workers import WorkerHandle, WorkerPool
from tests.unit.router.doubles import (
    LOOP_SCOPE,
    WORKER_SERVICE,
    FakeWorker,
    WorkerFactory,
    free_address,
    make_model,
    wait_until,
)

MODEL = make_model("tiny", "1")

pytestmark = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)


def model_status(
    state: worker_pb2.ResidencyState.ValueType, model: model_pb2.Model = MODEL
) -> worker_pb2.ModelStatus:
    return worker_pb2.ModelStatus(name=model.name, version=model.version, state=state)


@pytest_asyncio.fixture(loop_scope=LOOP_SCOPE)
async def pool() -> AsyncIterator[WorkerPool]:
    # Handles only: these tests set the status themselves instead of watching.
    pool = WorkerPool(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
    yield pool
    await pool.close()


def observe(
    handle: WorkerHandle,
    *models: worker_pb2.ModelStatus,
    queued_tokens: int = 0,
    watching: bool = True,
) -> None:
    handle.status = worker_pb2.WorkerStatus(
        worker_id=f"w-{handle.address[-1]}", models=list(models), queued_tokens=queued_tokens
    )
    handle.watching = watching


def addresses(handles: list[WorkerHandle]) -> list[str]:
    return [h.address for h in handles]


async def test_pool_follows_watch_status_and_reports_workers(start_worker: WorkerFactory) -> None:
    worker = await start_worker("w-live")
    dead = free_address()
    pool = WorkerPool([worker.address, dead], heartbeat_s=0.2)
    pool.start()
    try:
        live_handle, dead_handle = pool.workers
        await wait_until(lambda: live_handle.watching)
        worker.fake.set_models(model_status(worker_pb2.RESIDENCY_STATE_WARM))
        await wait_until(lambda: bool(pool.warm_workers(MODEL)))

        infos = {i.address: i for i in pool.infos()}
        assert pool.warm_workers(MODEL) == ["w-live"]
        assert infos[worker.address].worker_id == "w-live" and infos[worker.address].healthy
        assert not infos[dead].healthy and dead_handle.last_error
    finally:
        await pool.close()


async def test_pool_notices_a_worker_going_away_and_coming_back(
    start_worker: WorkerFactory,
) -> None:
    worker = await start_worker("w-flaky")
    pool = WorkerPool([worker.address], heartbeat_s=0.2)
    pool.start()
    try:
        (handle,) = pool.workers
        await wait_until(lambda: handle.watching)
        await worker.server.stop(0)
        await wait_until(lambda: not handle.watching)

        # The worker comes back on the same address (a restart, with a new id): the pool
        # reconnects and follows the new process's status.
        back = FakeWorker("w-flaky-restarted")
        server = await start_server(
            f"127.0.0.1:{worker.server.port}",
            lambda s: worker_pb2_grpc.add_WorkerServiceServicer_to_server(back, s),
            [WORKER_SERVICE],
        )
        try:
            # Backoff between reconnects reaches 5 s at most (WATCH_BACKOFF_S).
            await wait_until(
                lambda: handle.watching and handle.worker_id == "w-flaky-restarted",
                timeout_s=20,
            )
        finally:
            await server.stop(0)
    finally:
        await pool.close()


async def test_removing_a_worker_tells_the_listeners() -> None:
    pool = WorkerPool(["127.0.0.1:1", "127.0.0.1:2"], heartbeat_s=0.2)
    removed: list[str] = []
    pool.on_removed.append(removed.append)
    pool.remove("127.0.0.1:2", grace_s=0)
    pool.remove("127.0.0.1:9", grace_s=0)  # unknown: nothing to forget
    await pool.close()

    assert removed == ["127.0.0.1:2"]
    assert [h.address for h in pool.workers] == ["127.0.0.1:1"]


async def test_a_pushed_prefix_summary_is_kept_per_model_in_our_scheme_only(
    pool: WorkerPool,
) -> None:
    handle = pool.workers[0]
    other = make_model("other", "1")

    def status(sequence: int, hashes: list[int]) -> worker_pb2.WorkerStatus:
        ours = model_status(worker_pb2.RESIDENCY_STATE_WARM)
        ours.prefix_cache.scheme = PREFIX_SCHEME
        ours.prefix_cache.link_hashes.extend(hashes)
        theirs = model_status(worker_pb2.RESIDENCY_STATE_WARM, other)
        theirs.prefix_cache.scheme = "someone-elses-v9"
        theirs.prefix_cache.link_hashes.extend(hashes)
        return worker_pb2.WorkerStatus(sequence=sequence, models=[ours, theirs])

    assert handle.prefix_held(MODEL) is None  # nothing pushed yet
    handle.set_status(status(1, [1, 2**64 - 1]))
    assert handle.prefix_held(MODEL) == frozenset({1, 2**64 - 1})
    assert handle.prefix_held(other) is None  # another scheme: not understood, not used
    held = handle.prefix_held(MODEL)
    handle.set_status(status(1, [1, 2**64 - 1]))  # a heartbeat: the same set, not rebuilt
    assert handle.prefix_held(MODEL) is held
    handle.set_status(status(2, [3]))
    assert handle.prefix_held(MODEL) == frozenset({3})
