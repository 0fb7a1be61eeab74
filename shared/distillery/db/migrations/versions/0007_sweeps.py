"""Sweeps on the shared queue: an experiment's parent (the sweep) and its part in it, and the
stages a stage needs from other experiments (a shared teacher, a sweep's children)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column(
                "sweep",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch_op.create_index(batch_op.f("ix_experiments_parent_id"), ["parent_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_experiments_parent_id", "experiments", ["parent_id"], ["id"], ondelete="CASCADE"
        )
    op.create_table(
        "stage_needs",
        sa.Column("stage_id", sa.Integer(), nullable=False),
        sa.Column("needs_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["stage_id"], ["stages.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["needs_id"], ["stages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("stage_id", "needs_id"),
    )
    op.create_index(op.f("ix_stage_needs_needs_id"), "stage_needs", ["needs_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_stage_needs_needs_id"), table_name="stage_needs")
    op.drop_table("stage_needs")
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_constraint("fk_experiments_parent_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_experiments_parent_id"))
        batch_op.drop_column("sweep")
        batch_op.drop_column("parent_id")
