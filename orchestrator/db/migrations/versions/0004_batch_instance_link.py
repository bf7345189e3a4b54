"""batch instance link: the rented instance a batch is running on

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 10:03:17.176367
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on every database (SQLite >= 3.35 drops a column in place). Batch mode would rebuild ``batches``
# on SQLite, and dropping the old table with foreign keys on would null every ``assets.batch_id``.
def upgrade() -> None:
    op.add_column("batches", sa.Column("instance_id", sa.Uuid(), nullable=True))
    op.create_index(op.f("ix_batches_instance_id"), "batches", ["instance_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_batches_instance_id"), table_name="batches")
    op.drop_column("batches", "instance_id")
