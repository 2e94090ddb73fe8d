"""Offline evaluation runs (modelyard eval --record) and the model versions they cover.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "evaluation_runs",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("spec", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_evaluation_runs_created", "evaluation_runs", ["created_at_ms"])
    op.create_table(
        "evaluation_targets",
        sa.Column(
            "run_id",
            sa.String(128),
            sa.ForeignKey("evaluation_runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
    )
    op.create_index("ix_evaluation_targets_model", "evaluation_targets", ["model", "version"])


def downgrade() -> None:
    op.drop_table("evaluation_targets")
    op.drop_table("evaluation_runs")
