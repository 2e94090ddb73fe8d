"""Finding and verifying a model's weights.

`fetch` is the entry point: it returns a verified local path for any artifact URI
(file://, http(s)://, s3://, hf://), downloading remote ones once into the cache
of `worker.artifact_cache`. The sync helpers below check local files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from modelyard.errors import FailedPrecondition

if TYPE_CHECKING:
    from modelyard.v1 import model_pb2
    from worker.artifact_cache import ArtifactStore

GGUF_MAGIC = b"GGUF"


def local_path(uri: str) -> Path:
    """The file a `file://` URI or plain path names; FAILED_PRECONDITION for other schemes."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in {"", "localhost"}:
            raise FailedPrecondition(f"artifact {uri!r}: file URIs must name a local path")
        return Path(url2pathname(unquote(parsed.path)))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in {":\\", ":/"}):
        return Path(uri).expanduser()  # a plain path (or a Windows drive letter)
    raise FailedPrecondition(
        f"artifact {uri!r}: this worker reads only file:// URIs and local paths so far",
        reason="ARTIFACT_SCHEME_UNSUPPORTED",
        metadata={"uri": uri},
    )


def check_file(path: Path) -> int:
    """Size of the artifact file, or FAILED_PRECONDITION naming the path."""
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise FailedPrecondition(
            f"artifact {path} {what} on this worker",
            reason="ARTIFACT_MISSING",
            metadata={"path": str(path)},
        )
    return path.stat().st_size


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def verify_sha256(path: Path, expected: str) -> None:
    """Blocking (run it in a thread): stream-hash the file and compare."""
    actual = sha256_file(path)
    if actual != expected.strip().lower():
        raise FailedPrecondition(
            f"artifact {path} has sha256 {actual}, but the model expects {expected}: "
            "the file is corrupt or not the registered one",
            reason="CHECKSUM_MISMATCH",
            metadata={"path": str(path), "expected": expected, "actual": actual},
        )


def check_gguf_magic(path: Path) -> None:
    with path.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise FailedPrecondition(
            f"artifact {path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})",
            reason="ARTIFACT_CORRUPT",
            metadata={"path": str(path)},
        )


_default_store: ArtifactStore | None = None


def default_store() -> ArtifactStore:
    """The process's store, configured from MODELYARD_ARTIFACTS_* on first use."""
    global _default_store
    if _default_store is None:
        from worker.artifact_cache import ArtifactStore

        _default_store = ArtifactStore()
    return _default_store


async def fetch(
    artifact: model_pb2.Artifact,
    *,
    progress: Callable[[int, int | None], None] | None = None,
    retain: bool = False,
) -> Path:
    """Verified local path of `artifact`, downloaded once into the cache if remote.

    FAILED_PRECONDITION: checksum mismatch (the download quarantined), missing local
    file, unsupported scheme; NOT_FOUND: the remote has no such object; UNAVAILABLE:
    the remote cannot be reached; RESOURCE_EXHAUSTED: the cache cannot make room.
    `progress(done_bytes, total_bytes_or_None)` runs on the event loop.
    """
    return await default_store().fetch(artifact, progress=progress, retain=retain)
