"""Files already hashed: each file's sha256 is computed once per file identity.

A file's identity is its device, inode, size and modification time (ns). While all four
are unchanged the file is the one that was hashed (rewriting it changes its mtime,
replacing it changes its inode), so a load of a verified artifact skips the hash (a
SmolLM2-sized file hashes in about as long as llama.cpp takes to open it). A directory
(a Hugging Face checkpoint) is identified by every file in it, not by its own mtime,
which a rewritten file inside leaves unchanged. The record
is kept in the cache directory (`verified.json`), so a restarted worker does not hash
its artifacts again; anything that changes the identity makes the next load hash anew.

Thread-safe: the store checks digests on its hashing threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from worker.artifacts.files import write_atomic

log = logging.getLogger(__name__)

RECORD_NAME = "verified.json"
MAX_RECORDS = 256  # oldest dropped first: a cache holds far fewer artifacts than this


def identity(path: Path) -> str:
    """Changes whenever the file (or any file under the directory) may have changed.
    Take it before hashing: a change during the hash then shows at the next check."""
    if not path.is_dir():
        return _stat_identity(path.stat())
    h = hashlib.blake2b(digest_size=16)
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(path)}\0{_stat_identity(file.stat())}\0".encode())
    return "tree:" + h.hexdigest()


def _stat_identity(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


class VerifiedFiles:
    """path -> (identity, sha256) of files whose digest was computed; persisted to `record`."""

    def __init__(self, record: Path | None) -> None:
        self._record = record
        self._lock = threading.Lock()
        self._known: dict[str, tuple[str, str]] | None = None  # read on first use

    def digest(self, path: Path, ident: str) -> str | None:
        """The sha256 recorded for this file, if `ident` says it is the file that was hashed."""
        with self._lock:
            entry = self._entries().get(str(path))
        if entry is None or entry[0] != ident:
            return None
        return entry[1]

    def remember(self, path: Path, ident: str, sha256: str) -> None:
        with self._lock:
            known = self._entries()
            known.pop(str(path), None)  # re-inserted last: the newest
            known[str(path)] = (ident, sha256)
            while len(known) > MAX_RECORDS:
                del known[next(iter(known))]
            self._save(known)

    def _entries(self) -> dict[str, tuple[str, str]]:
        if self._known is None:
            self._known = self._load()
        return self._known

    def _load(self) -> dict[str, tuple[str, str]]:
        if self._record is None or not self._record.is_file():
            return {}
        try:
            raw = json.loads(self._record.read_text())
            return {str(path): (str(ident), str(sha)) for path, (ident, sha) in raw.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            log.warning("ignoring an unreadable %s: artifacts are hashed again", self._record)
            return {}

    def _save(self, known: dict[str, tuple[str, str]]) -> None:
        if self._record is None:
            return
        try:
            self._record.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self._record, json.dumps(known).encode())
        except OSError as err:  # a read-only cache: verified in this process only
            log.info("cannot record verified artifacts in %s: %s", self._record, err)
