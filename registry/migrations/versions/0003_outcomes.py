"""Request outcomes (raw, kept for a while) and their downsampled windows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_SERIES = ("model", "version", "route", "arm")


def _series_columns() -> list[sa.Column[str]]:
    return [sa.Column(name, sa.String(128), primary_key=True) for name in _SERIES]


def upgrade() -> None:
    op.create_table(
        "outcomes",
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("router_id", sa.String(128), nullable=False),
        sa.Column("finished_at_ms", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.String(128), nullable=False) for name in _SERIES),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(256), nullable=False),
        sa.Column("client", sa.String(128), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=False),
        sa.Column("total_ms", sa.Float(), nullable=False),
        sa.Column("ttft_bucket", sa.Integer(), nullable=True),
        sa.Column("total_bucket", sa.Integer(), nullable=True),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("feedback_score", sa.Float(), nullable=True),
        sa.Column("feedback_comment", sa.Text(), nullable=True),
    )
    op.create_index("ix_outcomes_finished", "outcomes", ["finished_at_ms"])
    op.create_table(
        "outcome_windows",
        sa.Column("window_start_ms", sa.BigInteger(), primary_key=True),
        *_series_columns(),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in (
                "requests",
                "errors",
                "input_tokens",
                "output_tokens",
                "cached_input_tokens",
                "cached_requests",
            )
        ),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("feedback_sum", sa.Float(), nullable=False),
        sa.Column("feedback_count", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_outcome_windows_start", "outcome_windows", ["window_start_ms"])
    op.create_table(
        "outcome_window_latency",
        sa.Column("window_start_ms", sa.BigInteger(), primary_key=True),
        *_series_columns(),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("bucket", sa.Integer(), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_outcome_window_latency_start", "outcome_window_latency", ["window_start_ms"]
    )


def downgrade() -> None:
    op.drop_table("outcome_window_latency")
    op.drop_table("outcome_windows")
    op.drop_table("outcomes")
