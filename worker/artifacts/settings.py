"""Where the artifact cache lives, how big it may grow, and the bounds of each fetch.

Nested in `WorkerSettings` as `artifacts`: MODELYARD_ARTIFACTS_* (the names the chart and
docs use) and MODELYARD_WORKER_ARTIFACTS_* both fill it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class ArtifactSettings(BaseModel):
    cache_dir: Path = Field(
        default=Path("~/.modelyard/artifacts"),  # "~" expanded where it is used
        description="Directory of the artifact cache (downloads, records, quarantine).",
    )
    max_cache_bytes: int = Field(
        default=50 << 30,
        gt=0,
        description="Downloaded files beyond this are evicted, least recently used first, "
        "unless in use. Downloads in progress and the quarantine count in it.",
    )
    max_artifact_bytes: int = Field(
        default=64 << 30,
        gt=0,
        description="Largest artifact one fetch may download; a larger declared size is "
        "refused before the download, a longer body is cut at this size. A download whose "
        "size is known neither from the registry (artifact.size_bytes) nor from the remote "
        "reserves this much (at most the whole cache) until it ends.",
    )
    max_download_s: float = Field(
        default=7200.0,
        gt=0,
        description="Total seconds one download may take (a server trickling bytes is cut "
        "then, within timeout_s); the load fails as UNAVAILABLE.",
    )
    max_concurrent_downloads: int = Field(
        default=2,
        ge=1,
        description="Downloads running at once, each on its own thread of the artifact "
        "executor (hashing included); more wait for a free one.",
    )
    quarantine_max_files: int = Field(
        default=2,
        ge=0,
        description="Downloads whose sha256 did not match kept for inspection, newest "
        "first; older ones are deleted, and they are the first evicted when the cache "
        "needs room. 0: delete them at once.",
    )
    timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to wait for a remote before the fetch fails as UNAVAILABLE.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint (MinIO, moto, R2); unset: AWS itself, or "
        "AWS_ENDPOINT_URL.",
    )
