"""gpu throughput samples: measured images/s per GPU model

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 10:19:55.286553
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
        "gpu_throughput_samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("gpu_name", sa.String(length=100), nullable=False),
        sa.Column("images_per_s", sa.Float(), nullable=False),
        sa.Column("source", sa.String(length=120), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gpu_throughput_samples")),
    )
    with op.batch_alter_table("gpu_throughput_samples", schema=None) as batch_op:
        batch_op.create_index("ix_gpu_throughput_samples_measured_at", ["measured_at"], unique=False)
        batch_op.create_index("ix_gpu_throughput_samples_source_measured_at", ["source", "measured_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("gpu_throughput_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_gpu_throughput_samples_source_measured_at")
        batch_op.drop_index("ix_gpu_throughput_samples_measured_at")

    op.drop_table("gpu_throughput_samples")
