"""Artifact fetches are bounded: in time, in bytes, in cache room reserved before the first
byte, and in quarantine (issue #11). A real loopback server misbehaves; a real store and
cache on disk take it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.errors import (
    FailedPrecondition,
    ModelyardError,
    ResourceExhausted,
    Unavailable,
)
from modelyard.refs import model_key
from modelyard.v1 import common_pb2, model_pb2
from tests.robustness.artifact_remote import (
    WAIT_S,
    Remote,
    Route,
    artifact,
    running_remote,
    store_at,
    until,
)
from worker.artifacts import ArtifactStore
from worker.catalogue.file import FileCatalogue
from worker.config import WorkerSettings
from worker.engines import available_engines
from worker.main import build_manager, start_worker
from worker.residency import ResidencyState

SECRET = "X-Amz-Signature=s3cr3t"  # a presigned URL's query: a credential


@pytest.fixture
def remote() -> Iterator[Remote]:
    with running_remote() as server:
        yield server


def assert_clean(err: ModelyardError, tmp_path: Path) -> None:
    """What a client may see: no query, no local path, no library text."""
    shown = " ".join([err.message, *err.metadata.values()])
    for leak in ("s3cr3t", "?", str(tmp_path), "Errno", "urlopen", "Traceback", "<"):
        assert leak not in shown, (leak, shown)


def assert_nothing_left(store: ArtifactStore) -> None:
    assert store.budget.reserved_bytes() == 0
    assert list(store.tmp.iterdir()) == [] and store.entries() == []


async def test_a_trickling_server_is_cut_at_the_total_time_and_the_load_fails(
    tmp_path: Path, remote: Remote
) -> None:
    # 4 KiB at ~800 bytes/s: it would finish in ~5 s, well past the 0.5 s allowed.
    body = b"GGUF" + b"t" * 4092
    remote.routes["slow.bin"] = Route(body, trickle=True)
    store = store_at(tmp_path, max_download_s=0.5)
    settings = WorkerSettings(address="127.0.0.1:0", threads=1, sim_engine=True)
    manager = build_manager(settings, store=store, engines=available_engines(sim=True))
    model = model_pb2.Model(
        name="slow",
        version="1",
        artifact=artifact(remote.url("slow.bin", SECRET), body),
        engines=[common_pb2.ENGINE_SIM],
        load_options=model_pb2.LoadOptions(extra={"sim_memory_bytes": str(1 << 20)}),
    )
    with pytest.raises(Unavailable) as err:
        await manager.load(model)
    assert err.value.reason == "ARTIFACT_DOWNLOAD_TOO_SLOW"
    assert "MAX_DOWNLOAD_S" in err.value.message
    assert_clean(err.value, tmp_path)
    resident = manager.get(model_key("slow", "1"))
    assert resident is not None and resident.state is ResidencyState.FAILED
    assert "s3cr3t" not in resident.error and str(tmp_path) not in resident.error
    assert 0 < remote.sent["slow.bin"] < len(body)
    assert_nothing_left(store)
    await manager.close()
    store.close()


async def test_without_a_declared_size_the_maximum_is_reserved_and_the_body_cut_there(
    tmp_path: Path, remote: Remote
) -> None:
    store = store_at(tmp_path, max_artifact_bytes=3000, max_cache_bytes=100_000)
    # Fits under the maximum: reserved at the maximum while it runs, then at its size.
    fits = remote.routes["fits"] = Route(b"f" * 2000, length=None, pause_at=1000)
    task = asyncio.create_task(store.fetch(artifact(remote.url("fits"), fits.body)))
    await until(fits.paused.is_set, "the first 1000 bytes")
    assert store.budget.reserved_bytes() == 3000  # never 0 while the size is unknown
    fits.gate.set()
    assert (await task).read_bytes() == fits.body
    assert store.budget.reserved_bytes() == 0 and store.cached_bytes() == 2000

    # Longer than the maximum: cut there, nothing kept.
    remote.routes["long"] = Route(b"l" * 10_000, length=None)
    with pytest.raises(ResourceExhausted) as err:
        await store.fetch(artifact(remote.url("long", SECRET)))
    assert err.value.reason == "ARTIFACT_TOO_LARGE" and "3000" in err.value.message
    assert_clean(err.value, tmp_path)
    assert store.budget.reserved_bytes() == 0 and list(store.tmp.iterdir()) == []
    assert [e.uri for e in store.entries()] == [remote.url("fits")]
    store.close()


async def test_a_body_longer_than_declared_is_never_written_past_the_declared_size(
    tmp_path: Path, remote: Remote
) -> None:
    store = store_at(tmp_path, max_cache_bytes=100_000)
    body = b"m" * 3000
    # The registry says 1000 bytes; the server declares nothing and sends 3000.
    remote.routes["undeclared"] = Route(body, length=None)
    with pytest.raises(FailedPrecondition) as err:
        await store.fetch(artifact(remote.url("undeclared", SECRET), body, size_bytes=1000))
    assert err.value.reason == "ARTIFACT_SIZE_MISMATCH"
    assert_clean(err.value, tmp_path)
    assert_nothing_left(store)

    # The server declares 1000 and sends 3000: only the declared bytes are read, so the
    # download is the first 1000 bytes, which do not match the digest of all 3000.
    remote.routes["liar"] = Route(body, length=1000)
    with pytest.raises(FailedPrecondition) as mismatch:
        await store.fetch(artifact(remote.url("liar"), body))
    assert mismatch.value.reason == "CHECKSUM_MISMATCH"
    [kept] = store.quarantined()
    assert kept.read_bytes() == body[:1000]

    # The registry and the server disagree on the size: refused before the body.
    remote.routes["disagree"] = Route(body, pause_at=0)
    with pytest.raises(FailedPrecondition) as disagree:
        await store.fetch(artifact(remote.url("disagree"), body, size_bytes=1000))
    assert disagree.value.reason == "ARTIFACT_SIZE_MISMATCH"
    assert remote.sent.get("disagree", 0) == 0
    store.close()


async def test_a_size_that_does_not_fit_is_refused_before_the_first_byte(
    tmp_path: Path, remote: Remote
) -> None:
    store = store_at(tmp_path, max_cache_bytes=4000)
    # Larger than the whole cache: refused on the headers; the body never started.
    remote.routes["huge"] = Route(b"h" * 5000, pause_at=0)
    with pytest.raises(ResourceExhausted) as err:
        await store.fetch(artifact(remote.url("huge", SECRET)))
    assert err.value.reason == "ARTIFACT_TOO_LARGE"
    assert_clean(err.value, tmp_path)
    assert remote.sent.get("huge", 0) == 0
    assert_nothing_left(store)

    # Fits the cache, but what it would evict is in use: refused before the body too.
    held_body = b"a" * 3000
    remote.routes["held"] = Route(held_body)
    held = await store.fetch(artifact(remote.url("held"), held_body), retain=True)
    remote.routes["more"] = Route(b"b" * 2000, pause_at=0)
    with pytest.raises(ResourceExhausted) as full:
        await store.fetch(artifact(remote.url("more")))
    assert full.value.reason == "ARTIFACT_CACHE_FULL"
    assert remote.sent.get("more", 0) == 0 and held.read_bytes() == held_body

    # The registry's declared size over the maximum: the remote is not even asked.
    with pytest.raises(ResourceExhausted):
        await store.fetch(artifact(remote.url("never"), size_bytes=1 << 40))
    assert remote.gets.get("never", 0) == 0
    store.close()


async def test_repeated_checksum_mismatches_keep_the_quarantine_bounded(
    tmp_path: Path, remote: Remote
) -> None:
    body = b"q" * 1000
    remote.routes["bad"] = Route(body)
    # Room for all five in the cache: only the quarantine's own bound keeps two.
    store = store_at(tmp_path, max_cache_bytes=10_000, quarantine_max_files=2)
    for attempt in range(5):
        with pytest.raises(FailedPrecondition) as err:
            await store.fetch(artifact(remote.url("bad", SECRET), sha256=f"{attempt:064d}"))
        assert err.value.reason == "CHECKSUM_MISMATCH"
        assert_clean(err.value, tmp_path)
        assert len(store.quarantined()) <= 2
    assert remote.gets["bad"] == 5 and len(store.quarantined()) == 2
    newest = store.quarantined()

    # The quarantine counts in the cache: a download that needs its room evicts the oldest.
    good = b"g" * 8500
    remote.routes["good"] = Route(good)
    assert (await store.fetch(artifact(remote.url("good"), good))).read_bytes() == good
    assert store.quarantined() == newest[1:]
    assert store.cached_bytes() + 1000 * len(store.quarantined()) <= 10_000

    # 0 keeps none: the evidence is deleted at once.
    none_kept = store_at(tmp_path / "none", quarantine_max_files=0)
    with pytest.raises(FailedPrecondition):
        await none_kept.fetch(artifact(remote.url("bad"), sha256="1" * 64))
    assert none_kept.quarantined() == [] and list(none_kept.tmp.iterdir()) == []
    store.close()
    none_kept.close()


async def test_stopping_the_worker_abandons_a_download_in_progress(
    tmp_path: Path, remote: Remote
) -> None:
    """A worker told to stop does not wait for a slow download (MAX_DOWNLOAD_S is hours):
    its download thread ends at the next block and the server stops being read."""
    body = b"GGUF" + b"t" * (1 << 20)  # ~20 minutes at the trickle's rate
    remote.routes["huge.bin"] = Route(body, trickle=True)
    store = store_at(tmp_path)
    settings = WorkerSettings(address="127.0.0.1:0", threads=1, sim_engine=True)
    model = model_pb2.Model(
        name="huge",
        version="1",
        artifact=artifact(remote.url("huge.bin"), body),
        engines=[common_pb2.ENGINE_SIM],
        load_options=model_pb2.LoadOptions(extra={"sim_memory_bytes": str(1 << 20)}),
    )
    worker = await start_worker(settings, catalogue=FileCatalogue([model]), store=store)
    loading = asyncio.create_task(worker.manager.load(model))
    await until(lambda: remote.sent.get("huge.bin", 0) > 0, "the download to start")
    async with asyncio.timeout(WAIT_S):
        await worker.stop(grace_s=0)
    await until(lambda: store.downloads() == (0, 0), "the download thread to end")
    assert remote.sent["huge.bin"] < len(body)
    await asyncio.gather(loading, return_exceptions=True)
