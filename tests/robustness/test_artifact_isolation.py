"""Artifact fetches keep to themselves (issue #11): a file in use is never replaced or
quarantined by a fetch of the same URI at another digest, and downloads run on their own
bounded executor, so a stalled one never holds the threads an unload needs.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from modelyard.errors import FailedPrecondition
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
from worker.config import WorkerSettings
from worker.engines import available_engines
from worker.main import build_manager
from worker.residency import ResidencyState

V1, V2 = b"GGUF version one" * 64, b"GGUF version two" * 64


@pytest.fixture
def remote() -> Iterator[Remote]:
    with running_remote() as server:
        yield server


async def test_another_digest_of_a_uri_in_use_gets_its_own_entry(
    tmp_path: Path, remote: Remote
) -> None:
    store = store_at(tmp_path)
    url = remote.url("m.gguf")
    remote.routes["m.gguf"] = Route(V1)
    one = await store.fetch(artifact(url, V1), retain=True)  # a loaded model holds it
    remote.routes["m.gguf"] = Route(V2)  # the file changed upstream; v2 registered with it
    two = await store.fetch(artifact(url, V2), retain=True)
    assert one != two and one.read_bytes() == V1 and two.read_bytes() == V2

    # A digest nothing matches: the new download is quarantined, never a file in use.
    with pytest.raises(FailedPrecondition) as err:
        await store.fetch(artifact(url, sha256="0" * 64))
    assert err.value.reason == "CHECKSUM_MISMATCH"
    assert one.read_bytes() == V1 and two.read_bytes() == V2
    assert [p.read_bytes() for p in store.quarantined()] == [V2]
    store.close()


async def test_a_cached_copy_that_changed_under_a_loaded_model_is_left_in_place(
    tmp_path: Path, remote: Remote
) -> None:
    store = store_at(tmp_path)
    url = remote.url("m.gguf")
    remote.routes["m.gguf"] = Route(V1)
    held = await store.fetch(artifact(url, V1), retain=True)
    held.write_bytes(b"bit rot")
    with pytest.raises(FailedPrecondition) as err:
        await store.fetch(artifact(url, V1))
    assert err.value.reason == "ARTIFACT_IN_USE" and "unload" in err.value.message
    assert held.read_bytes() == b"bit rot" and store.quarantined() == []

    store.release(held)  # the model is unloaded: now the bad copy goes, a good one comes
    again = await store.fetch(artifact(url, V1))
    assert again.read_bytes() == V1 and remote.gets["m.gguf"] == 2
    assert [p.read_bytes() for p in store.quarantined()] == [b"bit rot"]
    store.close()


async def test_fetches_of_one_uri_at_two_digests_never_share_a_download(
    tmp_path: Path, remote: Remote
) -> None:
    store = store_at(tmp_path)
    url = remote.url("m.gguf")
    route = remote.routes["m.gguf"] = Route(V1, pause_at=100)
    first = asyncio.create_task(store.fetch(artifact(url, V1)))
    await until(route.paused.is_set, "the first download to be under way")
    # Registered with another digest while the first download runs: its own download,
    # verified against its own digest (the server still has version one).
    second = asyncio.create_task(store.fetch(artifact(url, V2)))
    await until(lambda: remote.gets.get("m.gguf", 0) == 2, "the second download")
    route.gate.set()
    assert (await first).read_bytes() == V1
    with pytest.raises(FailedPrecondition) as err:
        await second
    assert err.value.reason == "CHECKSUM_MISMATCH"
    store.close()


async def test_a_stalled_download_does_not_hold_the_threads_an_unload_needs(
    tmp_path: Path, remote: Remote
) -> None:
    # One thread in the loop's shared pool: a download there would leave none for the rest.
    shared = ThreadPoolExecutor(1, thread_name_prefix="shared")
    asyncio.get_running_loop().set_default_executor(shared)
    store = store_at(tmp_path)
    settings = WorkerSettings(address="127.0.0.1:0", threads=1, sim_engine=True)
    manager = build_manager(settings, store=store, engines=available_engines(sim=True))
    weights = tmp_path / "sim.bin"
    weights.write_bytes(b"a simulated model")
    await manager.load(_sim_model(weights))

    stalled = remote.routes["stalled"] = Route(b"s" * 10_000, pause_at=100)
    download = asyncio.create_task(store.fetch(artifact(remote.url("stalled"))))
    await until(stalled.paused.is_set, "the download to stall")
    assert store.downloads() == (1, 0)
    # The unload (and its heap trim on the shared pool) ends while the download waits.
    await asyncio.wait_for(manager.unload(model_key("sim", "1")), WAIT_S)
    resident = manager.get(model_key("sim", "1"))
    assert resident is not None and resident.state is ResidencyState.COLD
    assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), WAIT_S) == "free"
    assert not download.done()

    stalled.gate.set()
    assert (await download).stat().st_size == 10_000
    await manager.close()
    store.close()


async def test_downloads_beyond_the_bound_wait_for_a_free_thread(
    tmp_path: Path, remote: Remote
) -> None:
    store = store_at(tmp_path, max_concurrent_downloads=1)
    one = remote.routes["one"] = Route(b"1" * 5000, pause_at=100)
    remote.routes["two"] = Route(b"2" * 5000)
    first = asyncio.create_task(store.fetch(artifact(remote.url("one"))))
    await until(one.paused.is_set, "the first download to stall")
    second = asyncio.create_task(store.fetch(artifact(remote.url("two"))))
    await until(lambda: store.downloads() == (1, 1), "the second download to queue")
    assert remote.gets.get("two", 0) == 0  # queued, not started
    one.gate.set()
    assert (await first).stat().st_size == 5000 and (await second).stat().st_size == 5000
    # The second GET came only once the first body had been sent whole.
    assert remote.sent_before["two"].get("one") == 5000 and store.downloads() == (0, 0)
    store.close()


def _sim_model(weights: Path) -> model_pb2.Model:
    return model_pb2.Model(
        name="sim",
        version="1",
        artifact=model_pb2.Artifact(
            uri=weights.as_uri(), sha256=hashlib.sha256(weights.read_bytes()).hexdigest()
        ),
        engines=[common_pb2.ENGINE_SIM],
        load_options=model_pb2.LoadOptions(extra={"sim_memory_bytes": str(1 << 20)}),
    )
