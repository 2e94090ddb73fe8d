"""The catalogue's SQL schema (SQLite by default, PostgreSQL in a cluster).

A model version is stored as the columns queries filter or sort on plus the
full Model message (without stage and timestamps, which live in columns) so a
new proto field needs no new column.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class CatalogRow(Base):
    """One row holding the catalogue's current revision.

    A counter row (rather than max(changes.revision)) survives pruning of old
    changes and, on PostgreSQL, its row lock serializes concurrent writers.
    """

    __tablename__ = "catalog"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)


CATALOG_ID = 1


class ChangeRow(Base):
    """One write to the catalogue: what Watch replays after a given revision."""

    __tablename__ = "changes"

    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[int] = mapped_column(Integer)  # registry_pb2.ChangeKind
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # a serialized CatalogChange
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_models_name_version"),
        Index("ix_models_name_id", "name", "id"),
        # Ids order versions by registration; never reuse one after a delete.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    stage: Mapped[int] = mapped_column(Integer)  # model_pb2.Stage
    chat: Mapped[bool]
    completion: Mapped[bool]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    spec: Mapped[bytes] = mapped_column(LargeBinary)  # Model, deterministic serialization


class ModelTagRow(Base):
    __tablename__ = "model_tags"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String, primary_key=True)


class ModelLabelRow(Base):
    __tablename__ = "model_labels"
    __table_args__ = (Index("ix_model_labels_key_value", "key", "value"),)

    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(String)


class RouteRow(Base):
    """A route, stored like a model: the columns lookups need plus the full message."""

    __tablename__ = "routes"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    spec: Mapped[bytes] = mapped_column(LargeBinary)  # Route without updated_at


class RouteRefRow(Base):
    """One reference from a route (an arm or a fallback) to a model or another route.

    Kept as rows so "is this version in use?" (DeleteModel, SetStage to archived,
    DeleteRoute) and the fallback graph are indexed queries, not a scan of every route.
    """

    __tablename__ = "route_refs"
    __table_args__ = (
        Index("ix_route_refs_target", "target_kind", "target_name", "target_version"),
    )

    route_name: Mapped[str] = mapped_column(
        ForeignKey("routes.name", ondelete="CASCADE"), primary_key=True
    )
    # The field that holds the reference, e.g. "arms[1].model" or "fallbacks[0]".
    field: Mapped[str] = mapped_column(String(64), primary_key=True)
    target_kind: Mapped[str] = mapped_column(String(8))  # "model" or "route"
    target_name: Mapped[str] = mapped_column(String(128))
    target_version: Mapped[str] = mapped_column(String(128))  # "" for a bare name


# -- outcomes: not catalogue (no revision, no Watch); see registry.outcomes ----------------


class OutcomeRow(Base):
    """One finished request, as a router reported it; kept for the raw retention, then
    folded into `outcome_windows`. Times are epoch milliseconds (dialect-neutral, cheap
    range scans); latencies are also kept as log-bucket indexes so SQL can histogram them."""

    __tablename__ = "outcomes"
    __table_args__ = (Index("ix_outcomes_finished", "finished_at_ms"),)

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    router_id: Mapped[str] = mapped_column(String(128))
    finished_at_ms: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    route: Mapped[str] = mapped_column(String(128))
    arm: Mapped[str] = mapped_column(String(128))
    attempt: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str] = mapped_column(String(256))
    client: Mapped[str] = mapped_column(String(128))
    status_code: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_input_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float] = mapped_column(Float)
    total_ms: Mapped[float] = mapped_column(Float)
    ttft_bucket: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_bucket: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cached: Mapped[bool]
    feedback_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    feedback_comment: Mapped[str | None] = mapped_column(Text, nullable=True)


# The additive columns of a window: what folding adds up and what queries sum.
WINDOW_SUMS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cached_requests",
    "cost_usd",
    "feedback_sum",
    "feedback_count",
)


class OutcomeWindowRow(Base):
    """The sums of one series' outcomes over one fixed window (downsampled raw rows)."""

    __tablename__ = "outcome_windows"
    __table_args__ = (Index("ix_outcome_windows_start", "window_start_ms"),)

    window_start_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    route: Mapped[str] = mapped_column(String(128), primary_key=True)
    arm: Mapped[str] = mapped_column(String(128), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_input_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_requests: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float] = mapped_column(Float)
    feedback_sum: Mapped[float] = mapped_column(Float)
    feedback_count: Mapped[int] = mapped_column(BigInteger)


class OutcomeWindowLatencyRow(Base):
    """One log bucket of a window's latency histogram (kind: "ttft" or "total")."""

    __tablename__ = "outcome_window_latency"
    __table_args__ = (Index("ix_outcome_window_latency_start", "window_start_ms"),)

    window_start_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    route: Mapped[str] = mapped_column(String(128), primary_key=True)
    arm: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


# -- offline evaluations: not catalogue either; see registry.evaluations -------------------


class EvaluationRunRow(Base):
    """One offline evaluation run: the whole EvaluationRun message plus its time."""

    __tablename__ = "evaluation_runs"
    __table_args__ = (Index("ix_evaluation_runs_created", "created_at_ms"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    spec: Mapped[bytes] = mapped_column(LargeBinary)  # EvaluationRun, deterministic


class EvaluationTargetRow(Base):
    """A model version one run evaluated, so runs are found by model as an indexed query."""

    __tablename__ = "evaluation_targets"
    __table_args__ = (Index("ix_evaluation_targets_model", "model", "version"),)

    run_id: Mapped[str] = mapped_column(
        ForeignKey("evaluation_runs.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
