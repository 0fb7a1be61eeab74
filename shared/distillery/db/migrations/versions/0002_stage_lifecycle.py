"""stage lifecycle: idempotency keys of submissions, one metric row per stage and step

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch_op.create_unique_constraint(
            "uq_experiments_owner_idempotency_key", ["owner_id", "idempotency_key"]
        )
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_metrics_stage_step", ["stage_id", "step"])


def downgrade() -> None:
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.drop_constraint("uq_metrics_stage_step", type_="unique")
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_constraint("uq_experiments_owner_idempotency_key", type_="unique")
        batch_op.drop_column("idempotency_key")
