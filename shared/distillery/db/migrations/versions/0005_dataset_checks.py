"""Dataset checks run as a job on the cpu queue: the staged archive, the message and the holder

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("archive_key", sa.String(length=500), nullable=True))
        batch_op.add_column(
            sa.Column("check_enqueued_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("check_holder", sa.String(length=200), nullable=True))
        batch_op.add_column(
            sa.Column("check_lease_until", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("check_attempts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("check_attempts")
        batch_op.drop_column("check_lease_until")
        batch_op.drop_column("check_holder")
        batch_op.drop_column("check_enqueued_at")
        batch_op.drop_column("archive_key")
