"""One artifact cache directory shared by several worker processes (the pods of a node).

Each test runs real OS processes (tests/robustness/artifact_child.py, each with its own
ArtifactStore; the test process is another) over one cache directory, against the
loopback artifact server, whose gates hold a download halfway so the interleaving is
the one the test names, not a race it hopes to win.
"""

from __future__ import annotations

import hashlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.errors import ResourceExhausted
from modelyard.v1 import model_pb2
from tests.robustness.artifact_remote import WAIT_S, Remote, Route, running_remote, store_at
from worker.artifacts import ArtifactStore, parse_uri
from worker.artifacts.locks import try_exclusive

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("artifact_child.py")
MB = 1_000_000
SETTLE_S = 1.0  # time a second process gets to reach the download it must not start


class Child:
    """A worker-like process with its own store over `cache`; one command, one reply."""

    def __init__(self, cache: Path, max_bytes: int) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(cache), str(max_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.reply() == "ready"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float = WAIT_S) -> str:
        return self._lines.get(timeout=timeout)

    def fetch(self, artifact: model_pb2.Artifact, *, retain: bool = False) -> None:
        self.send(f"fetch {artifact.uri} {artifact.sha256} {int(retain)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT_S)


@pytest.fixture
def remote() -> Iterator[Remote]:
    with running_remote() as r:
        yield r


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.stop()


def _serve(remote: Remote, name: str, size: int, pause_at: int | None = None) -> model_pb2.Artifact:
    body = hashlib.sha256(name.encode()).digest() * (size // 32)
    remote.routes[name] = Route(body=body, pause_at=pause_at)
    return model_pb2.Artifact(uri=remote.url(name), sha256=hashlib.sha256(body).hexdigest())


def _ok(reply: str) -> Path:
    status, _, path = reply.partition(" ")
    assert status == "ok", reply
    return Path(path)


def _wait(what: str, check: object) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _payloads(cache: Path) -> list[Path]:
    objects = cache / "objects"
    return [p for p in objects.rglob("*") if p.is_file() and p.suffix != ".json"]


def test_two_processes_download_an_artifact_once(
    tmp_path: Path, remote: Remote, children: list[Child]
) -> None:
    cache = tmp_path / "cache"
    art = _serve(remote, "m.gguf", MB, pause_at=MB // 4)
    children += [Child(cache, 10 * MB), Child(cache, 10 * MB)]
    for child in children:
        child.fetch(art)
    _wait("the first download to pause", remote.routes["m.gguf"].paused.is_set)
    time.sleep(SETTLE_S)  # the other process waits on the entry's download lock meanwhile
    assert remote.gets["m.gguf"] == 1
    remote.routes["m.gguf"].gate.set()
    first, second = (_ok(child.reply()) for child in children)
    assert first == second and hashlib.sha256(first.read_bytes()).hexdigest() == art.sha256
    assert remote.gets["m.gguf"] == 1  # the second process reused the verified file


async def test_eviction_skips_an_entry_another_process_holds(
    tmp_path: Path, remote: Remote, children: list[Child]
) -> None:
    a, b = _serve(remote, "a", MB), _serve(remote, "b", MB)
    children.append(holder := Child(tmp_path / "cache", 3 * MB // 2))
    holder.fetch(a, retain=True)  # a model loaded from it, in the other process
    held = _ok(holder.reply())
    store = store_at(tmp_path, max_cache_bytes=3 * MB // 2)  # room for one of the two
    try:
        with pytest.raises(ResourceExhausted) as err:
            await store.fetch(b)
        assert err.value.reason == "ARTIFACT_CACHE_FULL" and held.exists()
        holder.send(f"release {held}")  # the model unloads
        assert holder.reply() == "ok"
        placed = await store.fetch(b)
        assert placed.exists() and not held.exists()  # now a was the LRU unused entry
    finally:
        store.close()


async def test_a_download_in_another_process_keeps_its_reservation(
    tmp_path: Path, remote: Remote, children: list[Child]
) -> None:
    a, b = _serve(remote, "a", MB, pause_at=MB // 10), _serve(remote, "b", MB)
    children.append(downloader := Child(tmp_path / "cache", 3 * MB // 2))
    downloader.fetch(a)
    _wait("a's download to pause", remote.routes["a"].paused.is_set)
    store = store_at(tmp_path, max_cache_bytes=3 * MB // 2)
    try:
        with pytest.raises(ResourceExhausted) as err:
            await store.fetch(b)  # a's megabyte is promised, though not yet on disk
        assert err.value.reason == "ARTIFACT_CACHE_FULL"
        remote.routes["a"].gate.set()
        _ok(downloader.reply())
        assert (await store.fetch(b)).exists()  # a, done and unused, makes room
    finally:
        store.close()


async def test_a_process_killed_mid_download_leaves_no_file_and_no_lock(
    tmp_path: Path, remote: Remote, children: list[Child]
) -> None:
    cache = tmp_path / "cache"
    art = _serve(remote, "m.gguf", MB, pause_at=MB // 2)
    children.append(doomed := Child(cache, 10 * MB))
    doomed.fetch(art)
    _wait("the download to pause", remote.routes["m.gguf"].paused.is_set)
    _wait("bytes in tmp/", lambda: any(p.stat().st_size for p in (cache / "tmp").rglob("m.gguf")))
    key = parse_uri(art.uri).entry_key(art.sha256)
    lock = cache / "locks" / f"{key}.lock"
    assert try_exclusive(lock) is None  # the download holds its entry's lock
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(timeout=WAIT_S)
    assert _payloads(cache) == []  # the partial file never shows under objects/
    fd = try_exclusive(lock)  # the kernel let go of the dead process's lock
    assert fd is not None
    os.close(fd)
    route = remote.routes["m.gguf"]
    route.pause_at = None
    route.gate.set()  # the dead download's response ends (its reader is gone)
    store: ArtifactStore = store_at(tmp_path)
    try:
        path = await store.fetch(art)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == art.sha256
        assert remote.gets["m.gguf"] == 2 and _payloads(cache) == [path]
        assert list(store.tmp.iterdir()) == []  # the dead process's work directory is gone
    finally:
        store.close()
