"""Blocking downloads from http(s):// and s3:// into a file (run them on the store's
download executor; hf:// is hub.py).

Each source announces the size the remote declares (`reserve`, which makes room in the
cache or refuses) before it reads the body, then passes every block through the
download's `DownloadGuard` before writing it. Errors come out as modelyard errors:
NOT_FOUND for a missing object, UNAVAILABLE for an unreachable or failing remote (worth
a retry), FAILED_PRECONDITION for the rest. Their messages name the artifact as
`uri.shown` does (no query, no credentials) and never carry a library's text: the log
has that.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.errors import FailedPrecondition, NotFound, Unavailable
from worker.artifacts.guard import DownloadGuard
from worker.artifacts.settings import ArtifactSettings
from worker.artifacts.uri import ArtifactUri, shown, without_query

log = logging.getLogger(__name__)

CHUNK = 1 << 20
S3_CHUNK = 1 << 16  # botocore fills a chunk before returning it: small ones see the deadline

Sink = Callable[[bytes], None]
Reserve = Callable[[int | None], None]


def stream_to_file(
    src: ArtifactUri,
    dest: Path,
    reserve: Reserve,
    guard: DownloadGuard,
    settings: ArtifactSettings,
) -> str:
    """Download `src` into `dest`, hashing on the way and fsyncing: its sha256.

    `reserve(size)` runs once the remote has answered, before any byte is written
    (None: the remote did not say); UNAVAILABLE when the download ends short."""
    digest = hashlib.sha256()
    with dest.open("wb") as out:

        def sink(block: bytes) -> None:
            guard.take(len(block))  # before the write: never a byte past the limit
            try:
                out.write(block)
            except OSError as err:
                raise cache_write_error(src.uri, err) from err
            digest.update(block)

        if src.scheme in {"http", "https"}:
            _http(src, sink, reserve, settings)
        elif src.scheme == "s3":
            _s3(src, sink, reserve, settings)
        else:
            raise FailedPrecondition(f"artifact {shown(src.uri)}: no file download here")
        out.flush()
        os.fsync(out.fileno())
    guard.finish()
    return digest.hexdigest()


def cache_write_error(uri: str, err: OSError) -> Unavailable:
    log.error("artifact %s: writing to the artifact cache failed: %r", without_query(uri), err)
    return Unavailable(
        f"artifact {shown(uri)}: the worker could not write it to its artifact cache (disk "
        "full or not writable?); the worker log has the detail",
        reason="ARTIFACT_CACHE_IO",
    )


def _http(src: ArtifactUri, sink: Sink, reserve: Reserve, settings: ArtifactSettings) -> None:
    name = shown(src.uri)
    request = urllib.request.Request(src.uri, headers={"User-Agent": "modelyard-worker"})
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_s) as response:
            length = response.headers.get("Content-Length")
            reserve(int(length) if length and length.isdigit() else None)
            # read1: whatever has arrived, so a trickle still meets the guard's deadline.
            while block := response.read1(CHUNK):
                sink(block)
    except urllib.error.HTTPError as err:
        log.warning("artifact %s: HTTP %d", without_query(src.uri), err.code)
        if err.code in {404, 410}:
            raise NotFound(f"artifact {name}: the server answered {err.code}") from err
        if err.code >= 500 or err.code == 429:
            raise Unavailable(
                f"artifact {name}: the server answered {err.code}", retry_after_s=5.0
            ) from err
        raise FailedPrecondition(f"artifact {name}: the server answered {err.code}") from err
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        log.warning("artifact %s: %r", without_query(src.uri), err)
        raise Unavailable(
            f"artifact {name}: cannot reach the server, or it stopped answering within "
            f"{settings.timeout_s:g} s (MODELYARD_ARTIFACTS_TIMEOUT_S)"
        ) from err


def _s3(src: ArtifactUri, sink: Sink, reserve: Reserve, settings: ArtifactSettings) -> None:
    name = shown(src.uri)
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError as err:
        raise FailedPrecondition(
            f"artifact {name} needs boto3: pip install 'modelyard[s3]'",
            reason="ARTIFACT_SCHEME_UNSUPPORTED",
        ) from err
    config = Config(
        connect_timeout=settings.timeout_s,
        read_timeout=settings.timeout_s,
        retries={"max_attempts": 2},
    )
    try:
        client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)
        obj: dict[str, Any] = client.get_object(Bucket=src.location, Key=src.path)
        reserve(int(obj["ContentLength"]) if "ContentLength" in obj else None)
        for block in obj["Body"].iter_chunks(S3_CHUNK):
            sink(block)
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        log.warning("artifact %s: S3 %s: %s", name, code, err)
        if code in {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}:
            raise NotFound(f"artifact {name}: S3 answered {code}") from err
        if code in {"SlowDown", "ServiceUnavailable", "InternalError", "503", "500"}:
            raise Unavailable(f"artifact {name}: S3 answered {code}") from err
        raise FailedPrecondition(f"artifact {name}: S3 answered {code}") from err
    except NoCredentialsError as err:
        raise FailedPrecondition(f"artifact {name}: the worker has no AWS credentials") from err
    except BotoCoreError as err:
        log.warning("artifact %s: %r", name, err)
        raise Unavailable(f"artifact {name}: cannot reach S3 (see the worker log)") from err
