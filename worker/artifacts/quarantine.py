"""Downloads whose sha256 did not match, kept for inspection within a bound.

At most `max_files` items (newest kept, older deleted as a new one arrives; 0 keeps
none). Their bytes count in the cache budget, and they are the first thing a download
that needs room deletes (`ArtifactStore` lists them with `items`). Blocking: run in a
thread.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from worker.artifacts.files import tree_size

log = logging.getLogger(__name__)

PREFIX = "quarantine/"  # budget keys of quarantined items, apart from cache keys


class Quarantine:
    def __init__(self, root: Path, max_files: int) -> None:
        self.root = root
        self.max_files = max_files

    def put(self, payload: Path, key: str) -> Path | None:
        """Move `payload` in (or delete it when nothing is kept); where it went, if kept."""
        if self.max_files == 0:
            _remove(payload)
            log.warning("deleted %s (sha256 mismatch; the quarantine keeps none)", payload)
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        dest = self.root / f"{time.time_ns()}-{key}-{payload.name}"
        shutil.move(str(payload), str(dest))
        log.warning("quarantined %s at %s (sha256 mismatch)", payload.name, dest)
        for old in self.paths()[: -self.max_files]:
            log.info("deleting %s from the quarantine (it keeps %d)", old, self.max_files)
            _remove(old)
        return dest

    def paths(self) -> list[Path]:
        """Quarantined items, oldest first (names start with their time in ns)."""
        if not self.root.is_dir():
            return []
        return sorted(self.root.iterdir(), key=lambda p: (_stamp(p), p.name))

    def items(self) -> list[tuple[str, int, Path]]:
        """(budget key, bytes, path) of each item, oldest first."""
        found = []
        for path in self.paths():
            try:
                found.append((PREFIX + path.name, tree_size(path), path))
            except OSError:
                continue  # deleted meanwhile
        return found

    def remove(self, key: str) -> None:
        _remove(self.root / key.removeprefix(PREFIX))


def _stamp(path: Path) -> int:
    head = path.name.partition("-")[0]
    return int(head) if head.isdigit() else 0


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
