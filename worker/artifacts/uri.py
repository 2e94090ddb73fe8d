"""Parsing artifact URIs into the pieces each source needs.

Accepted: ``file:///abs/path`` or a plain path, ``bundled://...`` (modelyard/bundled.py),
``http(s)://...``, ``s3://bucket/key`` and ``hf://org/repo[@revision][/path/in/repo]``
(no path: the whole repository). Local kinds are resolved by files.local_path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from modelyard.errors import InvalidArgument


@dataclass(frozen=True)
class ArtifactUri:
    uri: str
    scheme: str  # "file", "http", "https", "s3" or "hf"
    # s3: bucket; hf: "org/repo"; http(s): host; file: "".
    location: str = ""
    # s3: object key; hf: file inside the repository ("" = whole repo); http: URL path.
    path: str = ""
    revision: str | None = None  # hf only

    @property
    def is_remote(self) -> bool:
        return self.scheme != "file"

    @property
    def cache_key(self) -> str:
        """Stable directory name for this URI in the cache."""
        return hashlib.sha256(self.uri.encode("utf-8")).hexdigest()[:32]

    def entry_key(self, sha256: str) -> str:
        """Cache key of this URI at this digest: another digest of the same URI is another
        entry, so a fetch for it never replaces (or quarantines) a file a model uses."""
        want = sha256.strip().lower()
        if not want:
            return self.cache_key
        return hashlib.sha256(f"{self.uri}\n{want}".encode()).hexdigest()[:32]

    @property
    def filename(self) -> str:
        """The name the downloaded payload keeps (engines look at suffixes like .gguf)."""
        name = PurePosixPath(self.path).name
        if not name and self.scheme == "hf":
            name = self.location.rsplit("/", 1)[-1]  # a whole repo becomes a directory
        return _safe_name(name) or "artifact"


def parse_uri(uri: str) -> ArtifactUri:
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in {"http", "https"}:
        if not parsed.netloc:
            raise _bad(uri, "an http(s) URI needs a host")
        return ArtifactUri(uri, scheme, parsed.netloc, unquote(parsed.path))
    if scheme == "s3":
        key = unquote(parsed.path).lstrip("/")
        if not parsed.netloc or not key:
            raise _bad(uri, "an s3 URI looks like s3://bucket/key")
        return ArtifactUri(uri, scheme, parsed.netloc, key)
    if scheme == "hf":
        return _parse_hf(uri, parsed.netloc, unquote(parsed.path))
    # Plain paths and file:// are resolved by files.local_path.
    return ArtifactUri(uri, "file")


def _parse_hf(uri: str, org: str, rest: str) -> ArtifactUri:
    parts = [p for p in rest.split("/") if p]
    if not org or not parts:
        raise _bad(uri, "an hf URI looks like hf://org/repo[@revision][/file]")
    repo, _, revision = parts[0].partition("@")
    if not repo or (revision == "" and "@" in parts[0]):
        raise _bad(uri, "the repository name or revision is empty")
    inner = "/".join(parts[1:])
    if any(p in {".", ".."} for p in parts[1:]):
        raise _bad(uri, "the file path may not contain '.' or '..'")
    return ArtifactUri(uri, "hf", f"{org}/{repo}", inner, revision or None)


def _safe_name(name: str) -> str:
    # The payload name lands on local disk: keep it one harmless path component.
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return cleaned.lstrip(".")[:200]


def _bad(uri: str, why: str) -> InvalidArgument:
    return InvalidArgument.for_field("artifact.uri", f"{shown(uri)}: {why}")


def without_query(uri: str) -> str:
    """Scheme, host[:port] and path of `uri`, for logs and spans: a presigned URL's query
    (and any user:password@) is a credential."""
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def shown(uri: str) -> str:
    """How a client-visible message names an artifact: a remote URI without its query or
    credentials; a local file by its name only (the worker's paths stay in its log)."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme in {"http", "https", "s3", "hf"}:
        return without_query(uri)
    name = PurePosixPath(urlsplit(uri).path.replace("\\", "/")).name
    return f"local file {name!r}" if name else "a local file"
