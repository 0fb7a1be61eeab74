"""Experiments shared with other users (their specs may use its checkpoints)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "experiment_shares",
        sa.Column("experiment_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "user_id"),
    )
    op.create_index(
        op.f("ix_experiment_shares_user_id"), "experiment_shares", ["user_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_experiment_shares_user_id"), table_name="experiment_shares")
    op.drop_table("experiment_shares")
