"""Blocking downloads from each remote scheme into an open file (run them in a thread).

Every source reports the total size as soon as it knows it (`reserve`, which makes
room in the cache or refuses), then streams chunks to `sink`. Errors come out as
modelyard errors: NOT_FOUND for a missing object, UNAVAILABLE for an unreachable
or failing remote (worth a retry), FAILED_PRECONDITION for the rest.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.errors import FailedPrecondition, ModelyardError, NotFound, Unavailable
from worker.artifacts.settings import ArtifactSettings
from worker.artifacts.uri import ArtifactUri

CHUNK = 1 << 20
PROGRESS_STEP = 1 << 20  # report at most once per MiB

Sink = Callable[[bytes], None]
Reserve = Callable[[int | None], None]
Progress = Callable[[int, int | None], None]


def stream_to_file(
    src: ArtifactUri,
    dest: Path,
    reserve_bytes: Callable[[int], None],
    report: Progress,
    settings: ArtifactSettings,
) -> tuple[str, int]:
    """Download `src` into `dest`, hashing on the way and fsyncing: (sha256, size).

    `reserve_bytes(size)` runs once the size is known (before the bytes come, or after
    them when the remote never said); UNAVAILABLE when the download ends short.
    """
    digest = hashlib.sha256()
    done, announced, total = 0, -PROGRESS_STEP, None

    def reserve(size: int | None) -> None:
        nonlocal total
        total = size
        reserve_bytes(size or 0)
        report(0, size)

    with dest.open("wb") as out:

        def sink(block: bytes) -> None:
            nonlocal done, announced
            out.write(block)
            digest.update(block)
            done += len(block)
            if done - announced >= PROGRESS_STEP:
                announced = done
                report(done, total)

        download_file(src, sink, reserve, settings)
        out.flush()
        os.fsync(out.fileno())
    if total is not None and done != total:
        raise Unavailable(f"artifact {src.uri}: download ended after {done} of {total} bytes")
    if total is None:
        reserve_bytes(done)
    report(done, done)
    return digest.hexdigest(), done


def download_file(
    src: ArtifactUri, sink: Sink, reserve: Reserve, settings: ArtifactSettings
) -> None:
    if src.scheme in {"http", "https"}:
        _http(src, sink, reserve, settings)
    elif src.scheme == "s3":
        _s3(src, sink, reserve, settings)
    else:
        raise FailedPrecondition(f"artifact {src.uri!r}: no file download for {src.scheme}://")


def download_hf(src: ArtifactUri, dest_dir: Path, settings: ArtifactSettings) -> Path:
    """hf:// through huggingface_hub into `dest_dir`; returns the file or the repo directory."""
    try:
        import huggingface_hub
    except ImportError as err:
        raise FailedPrecondition(
            f"artifact {src.uri!r} needs huggingface_hub: pip install 'modelyard[hf]'",
            reason="ARTIFACT_SCHEME_UNSUPPORTED",
        ) from err
    try:
        if src.path:
            got = huggingface_hub.hf_hub_download(
                src.location,
                src.path,
                revision=src.revision,
                local_dir=dest_dir,
                etag_timeout=settings.timeout_s,
            )
        else:
            got = huggingface_hub.snapshot_download(
                src.location,
                revision=src.revision,
                local_dir=dest_dir / src.filename,
                etag_timeout=settings.timeout_s,
            )
    except Exception as err:
        raise _hf_error(src, err) from err
    return Path(got)


def _http(src: ArtifactUri, sink: Sink, reserve: Reserve, settings: ArtifactSettings) -> None:
    request = urllib.request.Request(src.uri, headers={"User-Agent": "modelyard-worker"})
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_s) as response:
            length = response.headers.get("Content-Length")
            reserve(int(length) if length and length.isdigit() else None)
            while block := response.read(CHUNK):
                sink(block)
    except urllib.error.HTTPError as err:
        if err.code in {404, 410}:
            raise NotFound(f"artifact {src.uri!r}: the server answered {err.code}") from err
        if err.code >= 500 or err.code == 429:
            raise Unavailable(
                f"artifact {src.uri!r}: the server answered {err.code}", retry_after_s=5.0
            ) from err
        raise FailedPrecondition(f"artifact {src.uri!r}: the server answered {err.code}") from err
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise Unavailable(f"artifact {src.uri!r}: cannot reach the server: {err}") from err


def _s3(src: ArtifactUri, sink: Sink, reserve: Reserve, settings: ArtifactSettings) -> None:
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError as err:
        raise FailedPrecondition(
            f"artifact {src.uri!r} needs boto3: pip install 'modelyard[s3]'",
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
        for block in obj["Body"].iter_chunks(CHUNK):
            sink(block)
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}:
            raise NotFound(f"artifact {src.uri!r}: {code}") from err
        if code in {"SlowDown", "ServiceUnavailable", "InternalError", "503", "500"}:
            raise Unavailable(f"artifact {src.uri!r}: S3 answered {code}") from err
        raise FailedPrecondition(f"artifact {src.uri!r}: S3 answered {code}: {err}") from err
    except NoCredentialsError as err:
        raise FailedPrecondition(f"artifact {src.uri!r}: no AWS credentials found") from err
    except BotoCoreError as err:
        raise Unavailable(f"artifact {src.uri!r}: cannot reach S3: {err}") from err


def _hf_error(src: ArtifactUri, err: Exception) -> ModelyardError:
    # Matched by name: huggingface_hub has moved these classes between modules.
    names = {cls.__name__ for cls in type(err).__mro__}
    if names & {"RepositoryNotFoundError", "EntryNotFoundError", "RevisionNotFoundError"}:
        return NotFound(f"artifact {src.uri!r}: {err}")
    if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "Timeout"}:
        return Unavailable(f"artifact {src.uri!r}: cannot reach the Hugging Face Hub: {err}")
    if names & {"GatedRepoError", "HfHubHTTPError"}:
        return FailedPrecondition(f"artifact {src.uri!r}: {err}")
    return Unavailable(f"artifact {src.uri!r}: {err}")
