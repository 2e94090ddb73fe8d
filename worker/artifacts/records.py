"""The cache's records: `objects/<key>.json` says an entry is complete and what it holds."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheEntry:
    key: str
    uri: str
    sha256: str
    size: int
    payload: Path
    last_used: float


def read_entries(objects: Path) -> list[CacheEntry]:
    """Complete entries under `objects`, least recently used first (blocking)."""
    found: list[CacheEntry] = []
    if not objects.is_dir():
        return found
    for record in objects.glob("*.json"):
        try:
            data = json.loads(record.read_text())
            found.append(
                CacheEntry(
                    key=record.stem,
                    uri=str(data["uri"]),
                    sha256=str(data["sha256"]),
                    size=int(data["size"]),
                    payload=objects / record.stem / str(data["payload"]),
                    last_used=record.stat().st_mtime,
                )
            )
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable cache record %s: %s", record, err)
    return sorted(found, key=lambda e: e.last_used)
