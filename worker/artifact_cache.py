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
"""

from __future__ import annotations

import asyncio
import hashlib
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

from modelyard.errors import FailedPrecondition, ResourceExhausted, Unavailable
from modelyard.v1 import model_pb2
from worker import artifacts
from worker.artifact_settings import ArtifactSettings
from worker.artifact_sources import download_file, download_hf
from worker.artifact_uri import ArtifactUri, parse_uri

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]

_PROGRESS_STEP = 1 << 20  # report at most once per MiB
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
    def __init__(self, settings: ArtifactSettings | None = None) -> None:
        self.settings = settings if settings is not None else ArtifactSettings()
        root = self.settings.cache_dir.expanduser()
        self.objects, self.tmp, self.quarantine = (
            root / "objects",
            root / "tmp",
            root / "quarantine",
        )
        self._lock = threading.Lock()  # guards _refs, _reserved and eviction
        self._refs: dict[str, int] = {}
        self._reserved: dict[str, int] = {}  # bytes promised to downloads in flight
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
        path = artifacts.local_path(artifact.uri)
        if not path.is_dir():
            artifacts.check_file(path)
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
                digest = artifacts.sha256_path(payload)
                size = _tree_size(payload)
                self._reserve(key, size)
            else:
                payload = work / src.filename
                digest, size = self._stream(src, payload, report)
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

    def _stream(self, src: ArtifactUri, dest: Path, report: Progress) -> tuple[str, int]:
        digest = hashlib.sha256()
        done, announced, total = 0, -_PROGRESS_STEP, None

        def reserve(size: int | None) -> None:
            nonlocal total
            total = size
            self._reserve(src.cache_key, size or 0)
            report(0, size)

        with dest.open("wb") as out:

            def sink(block: bytes) -> None:
                nonlocal done, announced
                out.write(block)
                digest.update(block)
                done += len(block)
                if done - announced >= _PROGRESS_STEP:
                    announced = done
                    report(done, total)

            download_file(src, sink, reserve, self.settings)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done != total:
            raise Unavailable(f"artifact {src.uri}: download ended after {done} of {total} bytes")
        if total is None:
            self._reserve(src.cache_key, done)
        report(done, done)
        return digest.hexdigest(), done

    def _place(self, src: ArtifactUri, work: Path, payload: Path, digest: str, size: int) -> Path:
        key = src.cache_key
        final = self.objects / key
        self._drop(key)
        staged = work / "entry"
        staged.mkdir()
        os.rename(payload, staged / payload.name)
        os.rename(staged, final)  # one atomic rename makes the payload visible
        record = {"uri": src.uri, "sha256": digest, "size": size, "payload": payload.name}
        _write_atomic(self.objects / f"{key}.json", json.dumps(record).encode())
        _fsync_dir(self.objects)
        placed = final / payload.name
        stat = placed.stat()
        self._verified[placed] = (stat.st_size, stat.st_mtime_ns, digest)
        log.info("cached %s (%d bytes) at %s", src.uri, size, placed)
        return placed

    # -- eviction ------------------------------------------------------------------

    def _reserve(self, key: str, size: int) -> None:
        limit = self.settings.max_cache_bytes
        if size > limit:
            raise ResourceExhausted(
                f"artifact needs {size} bytes but the artifact cache holds at most {limit} "
                "(raise MODELYARD_ARTIFACTS_MAX_CACHE_BYTES)",
                reason="ARTIFACT_TOO_LARGE",
                metadata={"needed_bytes": str(size), "limit_bytes": str(limit)},
            )
        with self._lock:
            entries = [e for e in self.entries() if e.key != key]
            used = sum(e.size for e in entries) + sum(
                v for k, v in self._reserved.items() if k != key
            )
            for entry in entries:
                if used + size <= limit:
                    break
                if self._refs.get(entry.key, 0) > 0:
                    continue
                log.info(
                    "evicting %s (%d bytes, unused) from the artifact cache", entry.uri, entry.size
                )
                self._drop(entry.key)
                used -= entry.size
            if used + size > limit:
                raise ResourceExhausted(
                    f"artifact needs {size} bytes; the cache has {limit - used} free of {limit} "
                    "and the rest is in use",
                    reason="ARTIFACT_CACHE_FULL",
                    metadata={"needed_bytes": str(size), "available_bytes": str(limit - used)},
                    retry_after_s=30.0,
                )
            self._reserved[key] = size

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
        actual = artifacts.sha256_path(path)
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


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not supported here (Windows): the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
