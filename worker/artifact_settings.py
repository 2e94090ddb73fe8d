"""Where the artifact cache lives and how big it may grow (env prefix MODELYARD_ARTIFACTS_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ArtifactSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_ARTIFACTS_", extra="ignore")

    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".modelyard" / "artifacts")
    # Downloaded files beyond this are evicted, least recently used first, unless in use.
    max_cache_bytes: int = Field(default=50 << 30, gt=0)
    # Seconds to wait for a remote before the fetch fails as UNAVAILABLE.
    timeout_s: float = Field(default=30.0, gt=0)
    # S3-compatible endpoint (MinIO, moto, R2); None: AWS itself, or AWS_ENDPOINT_URL.
    s3_endpoint_url: str | None = None
