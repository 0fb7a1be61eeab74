"""gateway indexes: the experiment list's filters and order, the queue, latest metrics

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:40:00.000000

The list is `ORDER BY created_at DESC, id DESC`, optionally `WHERE status = ?` or `WHERE
owner_id = ?`: one composite index per filter serves the filter, the order and the LIMIT without a
sort. They replace the single-column indexes of 0001, which they lead with. The queue reads
stages by status in enqueue order; the detail reads each stage's last metric row.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (table, new index, its columns, the 0001 index it replaces, that index's columns)
INDEXES = [
    (
        "experiments",
        "ix_experiments_created_at_id",
        ["created_at", "id"],
        "ix_experiments_created_at",
        ["created_at"],
    ),
    (
        "experiments",
        "ix_experiments_status_created_at_id",
        ["status", "created_at", "id"],
        "ix_experiments_status",
        ["status"],
    ),
    (
        "experiments",
        "ix_experiments_owner_id_created_at_id",
        ["owner_id", "created_at", "id"],
        "ix_experiments_owner_id",
        ["owner_id"],
    ),
    (
        "stages",
        "ix_stages_status_enqueued_at",
        ["status", "enqueued_at"],
        "ix_stages_status",
        ["status"],
    ),
    ("metrics", "ix_metrics_stage_id_id", ["stage_id", "id"], "ix_metrics_stage_id", ["stage_id"]),
]


def upgrade() -> None:
    for table, name, columns, old, _ in INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(name, columns, unique=False)
            batch_op.drop_index(old)


def downgrade() -> None:
    for table, name, _, old, old_columns in reversed(INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(old, old_columns, unique=False)
            batch_op.drop_index(name)
