"""The artifact store: remote artifacts downloaded once into a size-bounded local cache.

Layout under `cache_dir`::

    objects/<key>/<name>   a verified payload (file, or directory for a whole hf:// repo)
    objects/<key>.json     its record (uri, sha256, size); written last, so it marks completion
    tmp/                   downloads in progress (same filesystem: placing one is a rename)
    quarantine/            payloads whose sha256 did not match, kept for inspection

Downloads stream into tmp/, are hashed on the way and fsynced, and only a payload
whose sha256 matches is renamed into objects/: a reader never sees a partial file.
Concurrent fetches of one URI share one download. Before writing, the store evicts
the least recently used entries nobody holds (see `retain`) until the new one fits.
`file://` artifacts are verified where they are and never copied.

Threads: downloads, hashing and deletions run in worker threads. `_lock` guards only
in-memory bookkeeping (references, reservations, entries being evicted), never file
I/O, because the event loop takes it too (`fetch`, `release`). An eviction picks its
victims under the lock, marks them, and deletes them after releasing it; a fetch of
a marked entry waits (in its thread) until the deletion is done, then misses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelyard.errors import FailedPrecondition, ResourceExhausted
from modelyard.v1 import model_pb2
from worker.artifacts.files import (
    check_file,
    fsync_dir,
    local_path,
    sha256_path,
    tree_size,
    write_atomic,
)
from worker.artifacts.settings import ArtifactSettings
from worker.artifacts.sources import download_hf, stream_to_file
from worker.artifacts.uri import ArtifactUri, parse_uri

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]

_STALE_TMP_S = 3600.0  # older leftovers in tmp/ come from a crashed download


@dataclass(frozen=True)
class CacheEntry:
    key: str
    uri: str
    sha256: str
    size: int
    payload: Path
    last_used: float


class ArtifactStore:
    def __init__(self, settings: ArtifactSettings) -> None:
        self.settings = settings
        root = self.settings.cache_dir.expanduser()
        self.objects, self.tmp, self.quarantine = (
            root / "objects",
            root / "tmp",
            root / "quarantine",
        )
        self._lock = threading.Lock()  # guards _refs, _reserved, _evicting; never held over I/O
        self._refs: dict[str, int] = {}
        self._reserved: dict[str, int] = {}  # bytes promised to downloads in flight
        self._evicting: dict[str, threading.Event] = {}  # set once the entry's files are gone
        self._inflight: dict[str, asyncio.Task[Path]] = {}
        self._listeners: dict[str, list[Progress]] = {}
        self._verified: dict[Path, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, sha)
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
            return await asyncio.to_thread(self._local, artifact)
        key = src.cache_key
        self._acquire(key)  # before the await: eviction never takes what we are about to get
        try:
            task = self._inflight.get(key)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._materialize(src, artifact))
                self._inflight[key] = task
                self._listeners[key] = []
                task.add_done_callback(lambda _: self._forget(key))
            if progress is not None:
                self._listeners.setdefault(key, []).append(progress)
            # shield: one caller giving up does not cancel the download the others wait on.
            path = await asyncio.shield(task)
        except BaseException:
            self._release_key(key)
            raise
        if not retain:
            self._release_key(key)
        return path

    def retain(self, path: Path) -> None:
        """Mark a fetched path as in use (never evicted) until `release`."""
        if (key := self._key_of(path)) is not None:
            self._acquire(key)

    def release(self, path: Path) -> None:
        if (key := self._key_of(path)) is not None:
            self._release_key(key)

    def entries(self) -> list[CacheEntry]:
        """Complete cache entries, least recently used first."""
        found: list[CacheEntry] = []
        if not self.objects.is_dir():
            return found
        for record in self.objects.glob("*.json"):
            try:
                data = json.loads(record.read_text())
                found.append(
                    CacheEntry(
                        key=record.stem,
                        uri=str(data["uri"]),
                        sha256=str(data["sha256"]),
                        size=int(data["size"]),
                        payload=self.objects / record.stem / str(data["payload"]),
                        last_used=record.stat().st_mtime,
                    )
                )
            except (OSError, ValueError, KeyError) as err:
                log.warning("ignoring unreadable cache record %s: %s", record, err)
        return sorted(found, key=lambda e: e.last_used)

    def cached_bytes(self) -> int:
        return sum(e.size for e in self.entries())

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

    async def _materialize(self, src: ArtifactUri, artifact: model_pb2.Artifact) -> Path:
        loop = asyncio.get_running_loop()
        hit = await asyncio.to_thread(self._cached, src, artifact)
        if hit is not None:
            return hit

        def report(done: int, total: int | None) -> None:
            loop.call_soon_threadsafe(self._report, src.cache_key, done, total)

        return await asyncio.to_thread(self._download, src, artifact, report)

    def _cached(self, src: ArtifactUri, artifact: model_pb2.Artifact) -> Path | None:
        self._prepare()
        self._wait_for_eviction(src.cache_key)
        record = self.objects / f"{src.cache_key}.json"
        if not record.is_file():
            return None
        try:
            data = json.loads(record.read_text())
            payload = self.objects / src.cache_key / str(data["payload"])
        except (OSError, ValueError, KeyError):
            payload = None
        if payload is None or not payload.exists():
            self._drop(src.cache_key)
            return None
        if artifact.sha256:
            try:
                self._check_sha(payload, artifact.sha256, src.uri)
            except FailedPrecondition:
                # A cached copy gone bad (or the record changed): keep the evidence, refetch.
                log.warning("cached %s failed its checksum; downloading it again", src.uri)
                self._quarantine(payload, src.cache_key)
                self._drop(src.cache_key)
                return None
        os.utime(record)  # LRU: last used now
        return payload

    def _download(self, src: ArtifactUri, artifact: model_pb2.Artifact, report: Progress) -> Path:
        self._prepare()
        key = src.cache_key
        work = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=self.tmp))
        try:
            if src.scheme == "hf":
                payload = download_hf(src, work, self.settings)
                digest = sha256_path(payload)
                size = tree_size(payload)
                self._reserve(key, size)
            else:
                payload = work / src.filename
                digest, size = stream_to_file(
                    src, payload, lambda size: self._reserve(key, size), report, self.settings
                )
            expected = artifact.sha256.strip().lower()
            if expected and digest != expected:
                moved = self._quarantine(payload, key)
                raise FailedPrecondition(
                    f"artifact {src.uri} has sha256 {digest}, but the model expects {expected}: "
                    f"not loaded; the download is quarantined at {moved}",
                    reason="CHECKSUM_MISMATCH",
                    metadata={
                        "uri": src.uri,
                        "expected": expected,
                        "actual": digest,
                        "quarantined": str(moved),
                    },
                )
            return self._place(src, work, payload, digest, size)
        finally:
            with self._lock:
                self._reserved.pop(key, None)
            shutil.rmtree(work, ignore_errors=True)

    def _place(self, src: ArtifactUri, work: Path, payload: Path, digest: str, size: int) -> Path:
        key = src.cache_key
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
        stat = placed.stat()
        self._verified[placed] = (stat.st_size, stat.st_mtime_ns, digest)
        log.info("cached %s (%d bytes) at %s", src.uri, size, placed)
        return placed

    # -- eviction ------------------------------------------------------------------

    def _reserve(self, key: str, size: int) -> None:
        """Promise `size` bytes to the download of `key`, evicting unused entries (LRU) first."""
        limit = self.settings.max_cache_bytes
        if size > limit:
            raise ResourceExhausted(
                f"artifact needs {size} bytes but the artifact cache holds at most {limit} "
                "(raise MODELYARD_ARTIFACTS_MAX_CACHE_BYTES)",
                reason="ARTIFACT_TOO_LARGE",
                metadata={"needed_bytes": str(size), "limit_bytes": str(limit)},
            )
        entries = [e for e in self.entries() if e.key != key]  # reads records: not under the lock
        with self._lock:
            victims, used = self._pick_victims(entries, key, size, limit)
            if used + size > limit:
                raise ResourceExhausted(
                    f"artifact needs {size} bytes; the cache has {limit - used} free of {limit} "
                    "and the rest is in use",
                    reason="ARTIFACT_CACHE_FULL",
                    metadata={"needed_bytes": str(size), "available_bytes": str(limit - used)},
                    retry_after_s=30.0,
                )
            self._reserved[key] = size
            for victim in victims:
                self._evicting[victim.key] = threading.Event()
        for victim in victims:  # the files go outside the lock
            log.info(
                "evicting %s (%d bytes, unused) from the artifact cache", victim.uri, victim.size
            )
            try:
                self._drop(victim.key)
            finally:
                with self._lock:
                    self._evicting.pop(victim.key).set()

    def _pick_victims(
        self, entries: list[CacheEntry], key: str, size: int, limit: int
    ) -> tuple[list[CacheEntry], int]:
        """Under `_lock`: unused entries to evict (LRU first) and the bytes used after them."""
        used = sum(e.size for e in entries if e.key not in self._evicting) + sum(
            v for k, v in self._reserved.items() if k != key
        )
        victims: list[CacheEntry] = []
        for entry in entries:
            if used + size <= limit:
                break
            if self._refs.get(entry.key, 0) > 0 or entry.key in self._evicting:
                continue
            victims.append(entry)
            used -= entry.size
        return victims, used

    def _wait_for_eviction(self, key: str) -> None:
        """In a thread: until an eviction of `key` that started before this fetch is done."""
        with self._lock:
            done = self._evicting.get(key)
        if done is not None:
            done.wait()

    def _drop(self, key: str) -> None:
        # Record first: without it the entry no longer counts as complete.
        (self.objects / f"{key}.json").unlink(missing_ok=True)
        shutil.rmtree(self.objects / key, ignore_errors=True)

    def _quarantine(self, payload: Path, key: str) -> Path:
        self.quarantine.mkdir(parents=True, exist_ok=True)
        dest = self.quarantine / f"{key}-{int(time.time())}-{payload.name}"
        shutil.move(str(payload), str(dest))
        log.warning("quarantined %s at %s (sha256 mismatch)", payload.name, dest)
        return dest

    # -- bookkeeping ---------------------------------------------------------------

    def _check_sha(self, path: Path, expected: str, uri: str) -> None:
        stat = path.stat()
        memo = self._verified.get(path)
        want = expected.strip().lower()
        if memo is not None and memo[:2] == (stat.st_size, stat.st_mtime_ns) and memo[2] == want:
            return  # hashed in this process and untouched since
        actual = sha256_path(path)
        if actual != want:
            raise FailedPrecondition(
                f"artifact {uri} has sha256 {actual}, but the model expects {want}: "
                "the file is corrupt or not the registered one",
                reason="CHECKSUM_MISMATCH",
                metadata={"path": str(path), "expected": want, "actual": actual},
            )
        self._verified[path] = (stat.st_size, stat.st_mtime_ns, actual)

    def _prepare(self) -> None:
        if self._prepared:
            return
        for d in (self.objects, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - _STALE_TMP_S
        for leftover in self.tmp.iterdir():
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)
        self._prepared = True

    def _acquire(self, key: str) -> None:
        with self._lock:
            self._refs[key] = self._refs.get(key, 0) + 1

    def _release_key(self, key: str) -> None:
        with self._lock:
            left = self._refs.get(key, 0) - 1
            if left > 0:
                self._refs[key] = left
            else:
                self._refs.pop(key, None)

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
