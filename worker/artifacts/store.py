"""The artifact store: remote artifacts downloaded once into a size-bounded local cache.

Layout under `cache_dir`::

    objects/<key>/<name>   a verified payload (file, or directory for a whole hf:// repo)
    objects/<key>.json     its record (uri, sha256, size); written last, so it marks completion
    tmp/                   downloads in progress (same filesystem: placing one is a rename)
    quarantine/            payloads whose sha256 did not match (bounded: quarantine.py)
    locks/                 flock files: the cache, each entry's download and lease (locks.py)

An entry's key is its URI and its expected sha256 (`ArtifactUri.entry_key`): a fetch of
the same URI at another digest is another entry, so it never replaces or quarantines a
file a model uses. Concurrent fetches of one entry share one download.

Each download runs on the store's own executor (at most `max_concurrent_downloads` at
once, hashing included), so a slow remote never holds the threads that unloads and
estimates share. It reserves its bytes in the cache budget before its first byte is
written: the registry's `artifact.size_bytes`, else the size the remote declares
(Content-Length, the S3 object's size, the Hub's file metadata), else the maximum
artifact size; the reservation evicts the quarantine, then least recently used entries
nobody holds (see `retain`), or refuses. The `DownloadGuard` cuts a body at its
reserved size and a download at `max_download_s`. Bytes stream into tmp/, are hashed
on the way and fsynced, and only a payload whose sha256 matches is renamed into
objects/: a reader never sees a partial file. `file://` artifacts are verified where
they are and never copied.

Locks: `CacheBudget` holds the in-memory bookkeeping under one lock, never over file
I/O. An eviction picks its victims under the lock, marks them, and deletes them after;
a fetch of a marked entry waits (in its thread) until the deletion is done, then misses.

Several processes (the worker pods of one node) may share `cache_dir`; locks.py has the
file locks, room.py the eviction across processes. A fetch holds the entry's lease
(shared) until it, or the model that keeps the path (`retain`), lets go; it looks up and
downloads under the entry's download lock: one process downloads, the others wait and
find the record. A dead process's locks die with it; its work directory in tmp/ is then
ownerless and deleted by the next store that starts or reserves room. Two processes may
overwrite each other's `verified.json`: a second hash of a file, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from modelyard.errors import FailedPrecondition, ModelyardError
from modelyard.v1 import model_pb2
from worker.artifacts.budget import CacheBudget
from worker.artifacts.files import check_file, fsync_dir, local_path, sha256_path, write_atomic
from worker.artifacts.guard import DownloadGuard
from worker.artifacts.locks import Leases, WorkLock, abandoned, exclusive, exclusive_async
from worker.artifacts.quarantine import PREFIX, Quarantine
from worker.artifacts.records import CacheEntry, read_entries
from worker.artifacts.room import Room
from worker.artifacts.settings import ArtifactSettings
from worker.artifacts.sources import cache_write_error
from worker.artifacts.transfer import Transfer
from worker.artifacts.uri import ArtifactUri, parse_uri, shown, without_query
from worker.artifacts.verified import RECORD_NAME, VerifiedFiles, identity

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]
T = TypeVar("T")

_STALE_TMP_S = 3600.0  # older leftovers without an owner file come from a crashed download


class ArtifactStore:
    def __init__(self, settings: ArtifactSettings) -> None:
        self.settings = settings
        root = self.settings.cache_dir.expanduser()
        self.objects, self.tmp, self.quarantine, self.locks = (
            root / "objects",
            root / "tmp",
            root / "quarantine",
            root / "locks",
        )
        self._leases = Leases(self.locks)  # this process's holds, seen by the others
        self.budget = CacheBudget(settings.max_cache_bytes)
        self._quarantine = Quarantine(self.quarantine, settings.quarantine_max_files)
        self._room = Room(  # drop: looked up at each call, so a test may wrap it
            root, self.budget, self._quarantine, self._leases, self.entries, lambda k: self._drop(k)
        )
        n = settings.max_concurrent_downloads
        self._downloads = ThreadPoolExecutor(n, thread_name_prefix="artifact-download")
        self._hashing = ThreadPoolExecutor(n, thread_name_prefix="artifact-verify")
        self._guards: set[DownloadGuard] = set()
        self._counts = [0, 0]  # downloads running, waiting for a thread (under budget.lock)
        self._inflight: dict[str, asyncio.Task[Path]] = {}
        self._listeners: dict[str, list[Progress]] = {}
        # Digests already computed, by file identity: a load never hashes a file twice.
        self._verified = VerifiedFiles(root / RECORD_NAME)
        self._prepared = False

    async def fetch(
        self,
        artifact: model_pb2.Artifact,
        *,
        progress: Progress | None = None,
        retain: bool = False,
    ) -> Path:
        """Local path of the artifact, verified against its sha256.

        retain=True keeps the entry safe from eviction until `release(path)`: the
        manager holds it while the model is loaded.
        """
        src = parse_uri(artifact.uri)
        if not src.is_remote:
            return await self._run(self._hashing, self._local, artifact)
        key = src.entry_key(artifact.sha256)
        self.budget.acquire(key)  # before the await: eviction never takes what we will get
        self.budget.wait_start(key)
        leased = False
        try:
            await self._leases.hold(key)  # nor does another process's, from now on
            leased = True
            task = self._inflight.get(key)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._materialize(src, artifact, key))
                self._inflight[key] = task
                self._listeners[key] = []
                task.add_done_callback(lambda _: self._forget(key))
            if progress is not None:
                self._listeners.setdefault(key, []).append(progress)
            # shield: one caller giving up does not cancel the download the others wait on.
            path = await asyncio.shield(task)
        except BaseException:
            self.budget.release(key)
            if leased:
                self._leases.drop(key)
            raise
        finally:
            self.budget.wait_end(key)
        if not retain:
            self._unhold(key)
        return path

    def retain(self, path: Path) -> None:
        """Mark a fetched path as in use (never evicted) until `release`."""
        if (key := self._key_of(path)) is not None:
            self.budget.acquire(key)
            while not self._leases.try_hold(key):  # another process is evicting it: brief
                time.sleep(0.01)

    def release(self, path: Path) -> None:
        if (key := self._key_of(path)) is not None:
            self._unhold(key)

    def _unhold(self, key: str) -> None:
        self.budget.release(key)
        self._leases.drop(key)

    def downloads(self) -> tuple[int, int]:
        """Downloads now (running, waiting for a free thread of the download executor)."""
        with self.budget.lock:
            return self._counts[0], self._counts[1]

    def close(self) -> None:
        """Abandon downloads in progress (each ends at its next block) and stop the threads."""
        for guard in list(self._guards):
            guard.cancel()
        self._downloads.shutdown(wait=False, cancel_futures=True)
        self._hashing.shutdown(wait=False, cancel_futures=True)

    def entries(self) -> list[CacheEntry]:
        """Complete cache entries, least recently used first."""
        return read_entries(self.objects)

    def cached_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def quarantined(self) -> list[Path]:
        """Quarantined payloads, oldest first."""
        return self._quarantine.paths()

    # -- file:// -------------------------------------------------------------------

    def _local(self, artifact: model_pb2.Artifact) -> Path:
        path = local_path(artifact.uri)
        if not path.is_dir():
            check_file(path)
        if artifact.sha256:
            # The user's own file: report a mismatch but never move it.
            self._check_sha(path, artifact.sha256, artifact.uri)
        return path

    # -- remote --------------------------------------------------------------------

    async def _materialize(self, src: ArtifactUri, artifact: model_pb2.Artifact, key: str) -> Path:
        loop = asyncio.get_running_loop()
        try:
            # One process at a time looks the entry up and downloads it; the others wait
            # here (without a thread) and then find what it placed.
            async with exclusive_async(self.locks / f"{key}.lock"):
                return await self._cached_or_downloaded(src, artifact, key, loop)
        except ModelyardError:
            raise
        except OSError as err:  # the cache's own disk: never a path or errno text to clients
            raise cache_write_error(src.uri, err) from err

    async def _cached_or_downloaded(
        self,
        src: ArtifactUri,
        artifact: model_pb2.Artifact,
        key: str,
        loop: asyncio.AbstractEventLoop,
    ) -> Path:
        hit = await self._run(self._hashing, self._cached, src, artifact, key)
        if hit is not None:
            return hit

        def report(done: int, total: int | None) -> None:
            loop.call_soon_threadsafe(self._report, key, done, total)

        guard = DownloadGuard(
            shown(src.uri),
            max_bytes=self.settings.max_artifact_bytes,
            max_s=self.settings.max_download_s,
            report=report,
        )
        self._guards.add(guard)
        self._count(waiting=1)
        try:
            return await self._run(self._downloads, self._download, src, artifact, key, guard)
        finally:
            self._guards.discard(guard)

    def _cached(self, src: ArtifactUri, artifact: model_pb2.Artifact, key: str) -> Path | None:
        self._prepare()
        self.budget.wait_for_eviction(key)
        record = self.objects / f"{key}.json"
        if not record.is_file():
            return None
        try:
            data = json.loads(record.read_text())
            payload = self.objects / key / str(data["payload"])
        except (OSError, ValueError, KeyError):
            payload = None
        if payload is None or not payload.exists():
            self._drop(key)
            return None
        if artifact.sha256:
            try:
                self._check_sha(payload, artifact.sha256, src.uri)
            except FailedPrecondition:
                # In use here, or (the lease not ours alone) in another process: leave it.
                if self.budget.held_by_others(key) or not self._leases.upgrade(key):
                    raise _in_use_and_changed(src) from None
                try:  # A cached copy gone bad: keep the evidence (bounded), fetch it again.
                    log.warning("cached %s failed its checksum; downloading it again", src.uri)
                    self._quarantine.put(payload, key)
                    self._drop(key)
                finally:
                    self._leases.downgrade(key)
                return None
        os.utime(record)  # LRU: last used now
        return payload

    def _download(
        self, src: ArtifactUri, artifact: model_pb2.Artifact, key: str, guard: DownloadGuard
    ) -> Path:
        self._count(running=1, waiting=-1)
        guard.start()  # the time limit counts from here, not from the wait for a thread
        try:
            self._prepare()
            work = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=self.tmp))
            self._room.works.add(work.name)
            owner = WorkLock(work)  # until it is gone: other processes see it alive
            try:
                return self._download_into(work, owner, src, artifact, key, guard)
            finally:
                self.budget.unreserve(work.name)
                shutil.rmtree(work, ignore_errors=True)
                owner.close()
                self._room.works.discard(work.name)
        finally:
            self._count(running=-1)

    def _download_into(
        self,
        work: Path,
        owner: WorkLock,
        src: ArtifactUri,
        artifact: model_pb2.Artifact,
        key: str,
        guard: DownloadGuard,
    ) -> Path:
        transfer = Transfer(src, artifact, guard, self.settings, work)
        payload, digest = transfer.run(lambda size: self._room.make(owner, work.name, key, size))
        expected = artifact.sha256.strip().lower()
        if expected and digest != expected:
            kept = "quarantined on the worker" if self._quarantine.put(payload, key) else "deleted"
            raise FailedPrecondition(
                f"artifact {guard.name} has sha256 {digest}, but the model expects "
                f"{expected}: not loaded (the download is {kept})",
                reason="CHECKSUM_MISMATCH",
                metadata={"expected": expected, "actual": digest},
            )
        with exclusive(self.locks / "cache.lock"):
            return self._place(src, key, work, payload, digest, transfer.size)

    def _place(
        self, src: ArtifactUri, key: str, work: Path, payload: Path, digest: str, size: int
    ) -> Path:
        final = self.objects / key
        self._drop(key)
        staged = work / "entry"
        staged.mkdir()
        os.rename(payload, staged / payload.name)
        os.rename(staged, final)  # one atomic rename makes the payload visible
        record = {"uri": src.uri, "sha256": digest, "size": size, "payload": payload.name}
        write_atomic(self.objects / f"{key}.json", json.dumps(record).encode())
        fsync_dir(self.objects)
        placed = final / payload.name
        self._verified.remember(placed, identity(placed), digest)
        log.info("cached %s (%d bytes) at %s", without_query(src.uri), size, placed)
        return placed

    # -- eviction ------------------------------------------------------------------

    def _drop(self, key: str) -> None:
        if key.startswith(PREFIX):
            self._quarantine.remove(key)
            return
        # Record first: without it the entry no longer counts as complete.
        (self.objects / f"{key}.json").unlink(missing_ok=True)
        shutil.rmtree(self.objects / key, ignore_errors=True)

    # -- bookkeeping ---------------------------------------------------------------

    def _check_sha(self, path: Path, expected: str, uri: str) -> None:
        ident = identity(path)
        want = expected.strip().lower()
        if self._verified.digest(path, ident) == want:
            return  # hashed before (here or by an earlier run) and the same file since
        actual = sha256_path(path)
        if actual != want:
            log.warning("artifact %s at %s has sha256 %s, not %s", shown(uri), path, actual, want)
            raise FailedPrecondition(
                f"artifact {shown(uri)} has sha256 {actual}, but the model expects {want}: "
                "the file is corrupt or not the registered one",
                reason="CHECKSUM_MISMATCH",
                metadata={"expected": want, "actual": actual},
            )
        self._verified.remember(path, ident, actual)

    def _prepare(self) -> None:
        if self._prepared:
            return
        for d in (self.objects, self.tmp, self.locks):
            d.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - _STALE_TMP_S
        for leftover in self.tmp.iterdir():
            if abandoned(leftover, cutoff):  # never another live process's download
                shutil.rmtree(leftover, ignore_errors=True)
        self._prepared = True

    def _count(self, *, running: int = 0, waiting: int = 0) -> None:
        with self.budget.lock:
            self._counts[0] += running
            self._counts[1] += waiting

    def _key_of(self, path: Path) -> str | None:
        try:
            return path.resolve().relative_to(self.objects.resolve()).parts[0]
        except (ValueError, IndexError):
            return None  # a file:// artifact: not ours to evict

    def _report(self, key: str, done: int, total: int | None) -> None:
        for listener in list(self._listeners.get(key, ())):
            try:
                listener(done, total)
            except Exception:
                log.exception("artifact progress callback failed")

    def _forget(self, key: str) -> None:
        self._inflight.pop(key, None)
        self._listeners.pop(key, None)

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def _in_use_and_changed(src: ArtifactUri) -> FailedPrecondition:
    return FailedPrecondition(
        f"artifact {shown(src.uri)}: the cached copy no longer matches its sha256, and a "
        "loaded model (or a load in progress) uses it, so it is left in place: unload the "
        "models using it, then load again to fetch it anew",
        reason="ARTIFACT_IN_USE",
    )
