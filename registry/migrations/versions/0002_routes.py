"""Routes and the references they hold (arms and fallbacks).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "routes",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spec", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "route_refs",
        sa.Column(
            "route_name",
            sa.String(128),
            sa.ForeignKey("routes.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("field", sa.String(64), primary_key=True),
        sa.Column("target_kind", sa.String(8), nullable=False),
        sa.Column("target_name", sa.String(128), nullable=False),
        sa.Column("target_version", sa.String(128), nullable=False),
    )
    op.create_index(
        "ix_route_refs_target", "route_refs", ["target_kind", "target_name", "target_version"]
    )


def downgrade() -> None:
    op.drop_table("route_refs")
    op.drop_table("routes")
