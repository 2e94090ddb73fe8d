"""Where the artifact cache lives and how big it may grow.

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
        "unless in use.",
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
