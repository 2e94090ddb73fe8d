"""Settings of the registry process, from MODELYARD_REGISTRY_* variables or flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modelyard.settings import CommaList, ServiceSettings


def default_database_url() -> str:
    return "sqlite+aiosqlite:///" + str(Path("~/.modelyard/registry.db").expanduser())


class RegistrySettings(ServiceSettings):
    """The registry's one settings object (MODELYARD_REGISTRY_*, TLS under _TLS_*)."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_REGISTRY_")

    address: str = Field(
        default="127.0.0.1:50051",
        description="host:port to listen on; port 0 picks a free port.",
    )
    database_url: str = Field(
        default_factory=default_database_url,
        description=(
            "SQLAlchemy async URL of the catalogue: sqlite+aiosqlite:///path.db "
            "(default ~/.modelyard/registry.db) or postgresql+asyncpg://user@host/db."
        ),
    )
    log_level: str = Field(default="INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")
    admin_token: str = Field(
        default="",
        description=(
            "Bearer token of the registry admin, required for writes (metadata "
            "'authorization: Bearer <token>'); also accepted for reads. Empty: writes are open "
            "(unless admin_identities is set)."
        ),
    )
    reader_tokens: CommaList = Field(
        default_factory=list,
        description=(
            "Reader tokens, comma-separated 'name:token' entries (one per consumer: routers, "
            "workers): reads need one of them or the admin token. Empty: reads are open "
            "(unless reader_identities is set)."
        ),
    )
    admin_identities: CommaList = Field(
        default_factory=list,
        description=(
            "With mTLS: certificate SAN values (e.g. spiffe://modelyard/registry-admin) a "
            "writer must present, in addition to the admin token when one is set."
        ),
    )
    reader_identities: CommaList = Field(
        default_factory=list,
        description=(
            "With mTLS: certificate SAN values (e.g. spiffe://modelyard/router, "
            "spiffe://modelyard/worker) a reader must present."
        ),
    )
    outcome_writer_tokens: CommaList = Field(
        default_factory=list,
        description=(
            "Outcome-writer tokens, comma-separated 'name:token' entries (one per router "
            "deployment): RecordOutcomes and AttachFeedback need one of them or the admin "
            "token. Empty: outcome writes are open (unless outcome_writer_identities is set)."
        ),
    )
    outcome_writer_identities: CommaList = Field(
        default_factory=list,
        description=(
            "With mTLS: certificate SAN values (e.g. spiffe://modelyard/router) an outcome "
            "writer must present."
        ),
    )
    outcome_retention_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description=(
            "Seconds raw request outcomes (and the feedback on them) are kept; then they are "
            "folded into windows and feedback on them is refused."
        ),
    )
    outcome_window_s: int = Field(
        default=60, ge=1, le=86_400, description="Width of the windows old outcomes fold into."
    )
    outcome_window_retention_s: float = Field(
        default=30 * 24 * 3600.0, gt=0, description="Seconds the folded windows are kept."
    )
    outcome_fold_interval_s: float = Field(
        default=60.0, gt=0, description="How often the registry folds and expires outcomes."
    )
    rollout_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description=(
            "How often the rollout controller judges each running rollout's step "
            "(on PostgreSQL only the replica holding the controller lock does)."
        ),
    )
    change_retention: int = Field(
        default=10_000,
        ge=1,
        description=(
            "Changes kept for Watch to replay; a watcher resuming from further back "
            "gets a fresh snapshot instead."
        ),
    )
    watch_poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description=(
            "How often watchers check for writes made by other registry replicas "
            "(writes of this replica wake them at once)."
        ),
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus /metrics port; 0 = off."
    )
    metrics_host: str = Field(
        default="",
        description="Interface /metrics binds to; empty: the host of `address`.",
    )
