"""The sha256 of a file, read in chunks (blocking: run it in a thread from async code)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_HEX = frozenset("0123456789abcdef")


def is_sha256(text: str) -> bool:
    """Whether `text` is a lowercase hex sha256: 64 characters of 0-9a-f, nothing else
    (so it is also safe as a file or directory name)."""
    return len(text) == 64 and set(text) <= _HEX
