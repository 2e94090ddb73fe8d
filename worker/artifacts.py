"""Finding and verifying a model's weights on local disk.

Only file:// URIs and plain paths for now; the download cache for http(s)://,
s3:// and hf:// artifacts plugs in behind `local_path`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from modelyard.errors import FailedPrecondition

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
