"""File locks that let several worker processes share one artifact cache (`fcntl.flock`).

Three kinds, all under `<cache>/locks/` except a download's own:

    locks/cache.lock      exclusive, blocking, short: records, reservations, eviction
    locks/<key>.lock      exclusive for a fetch of the entry that may download it: one process
                          downloads, the others wait and then find the verified file
    locks/<key>.lease     shared for as long as a process holds the entry (a fetch in
                          progress or a loaded model); eviction takes it exclusive without
                          waiting and skips the entry when it cannot
    tmp/<work>/.owner     exclusive for the life of one download; holds the bytes it reserved

A flock belongs to an open file description, not to a thread: one taken in one thread may
be released in another, and two descriptions of one file conflict even in one process. The
kernel releases every lock of a process that dies, so a crash never leaves one held. Lock
files are never deleted: a process may hold an open description of the old file while
another creates a new one under the same name, and the two would not exclude each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

_POLL_S = (0.01, 0.25)  # first and longest pause between tries of a lock held elsewhere


def open_lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def try_flock(fd: int, kind: int) -> bool:
    """`kind` (LOCK_SH or LOCK_EX) without waiting; False when another holder conflicts."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold `path` exclusively, waiting for it (blocking: run in a thread)."""
    fd = open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


@contextlib.asynccontextmanager
async def exclusive_async(path: Path) -> AsyncIterator[None]:
    """Hold `path` exclusively; waits by polling, so no thread is held and a cancel ends it."""
    fd = open_lock(path)
    try:
        pause = _POLL_S[0]
        while not try_flock(fd, fcntl.LOCK_EX):
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_S[1])
        yield
    finally:
        os.close(fd)


def try_exclusive(path: Path) -> int | None:
    """An open descriptor holding `path` exclusively, or None when another holds it."""
    fd = open_lock(path)
    if try_flock(fd, fcntl.LOCK_EX):
        return fd
    os.close(fd)
    return None


class Leases:
    """This process's shared locks on entries it holds: one descriptor per entry, counted.

    `try_hold` and `drop` never wait (safe on the event loop); `upgrade` and `downgrade` may
    (run them in a thread).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()  # guards the dicts only, never over a wait
        self._fds: dict[str, int] = {}
        self._counts: dict[str, int] = {}

    def path(self, key: str) -> Path:
        return self.root / f"{key}.lease"

    def try_hold(self, key: str) -> bool:
        """One more hold of `key`; False while another process evicts it (try again)."""
        with self._lock:
            if key in self._fds:
                self._counts[key] += 1
                return True
            fd = open_lock(self.path(key))
            if not try_flock(fd, fcntl.LOCK_SH):
                os.close(fd)
                return False
            self._fds[key], self._counts[key] = fd, 1
            return True

    async def hold(self, key: str) -> None:
        pause = _POLL_S[0]
        while not self.try_hold(key):
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_S[1])

    def drop(self, key: str) -> None:
        with self._lock:
            left = self._counts.get(key, 0) - 1
            if left > 0:
                self._counts[key] = left
                return
            self._counts.pop(key, None)
            fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def upgrade(self, key: str) -> bool:
        """Whether this process alone holds `key` (then exclusively: `downgrade` after).

        A failed conversion drops the shared lock (flock converts by unlock, then lock), so
        it is taken again, waiting out any eviction that slipped in between."""
        with self._lock:
            fd = self._fds.get(key)
        if fd is None:
            return False
        if try_flock(fd, fcntl.LOCK_EX):
            return True
        fcntl.flock(fd, fcntl.LOCK_SH)
        return False

    def downgrade(self, key: str) -> None:
        with self._lock:
            fd = self._fds.get(key)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)


class WorkLock:
    """A download's claim on its work directory in tmp/ and on the bytes it reserved.

    Held exclusively from creation until the directory is removed, so a directory whose
    `.owner` lock is free belongs to a dead process: its bytes count for nothing and it
    may be deleted."""

    NAME = ".owner"

    def __init__(self, work: Path) -> None:
        self.fd = open_lock(work / self.NAME)
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # a new file: nobody else has it

    def record(self, size: int) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(size).encode(), 0)

    def close(self) -> None:
        os.close(self.fd)


def live_reservation(work: Path) -> int | None:
    """Bytes a live download in `work` reserved (0 before it reserves); None when the
    directory has no live owner (a crashed download, or one just ending)."""
    try:
        fd = os.open(work / WorkLock.NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if try_flock(fd, fcntl.LOCK_SH):
            return None  # nobody holds it
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)


def reserved_elsewhere(tmp: Path, mine: set[str]) -> int:
    """Bytes the live downloads of other processes reserved (call under the cache lock).
    Work directories of dead processes are deleted on the way."""
    total = 0
    for work in tmp.iterdir() if tmp.is_dir() else ():
        if work.name in mine:
            continue  # this process's own: its budget counts them
        size = live_reservation(work)
        if size is not None:
            total += size
        elif (work / WorkLock.NAME).exists():
            shutil.rmtree(work, ignore_errors=True)  # its process died mid-download
    return total


def abandoned(work: Path, cutoff: float) -> bool:
    """Whether a leftover in tmp/ belongs to no live download: its owner lock is free, or it
    has none (an older layout, or a crash before it was made) and is older than `cutoff`."""
    if (work / WorkLock.NAME).exists():
        return live_reservation(work) is None
    try:
        return work.stat().st_mtime < cutoff
    except OSError:
        return False  # gone meanwhile
