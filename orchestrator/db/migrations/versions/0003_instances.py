"""instances and excluded machines

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 09:48:02.199987
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "excluded_machines",
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("machine_id", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=300), nullable=False),
        sa.Column("instance_id", sa.Uuid(), nullable=True),
        sa.Column("excluded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("provider", "machine_id", name=op.f("pk_excluded_machines")),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("provider_instance_id", sa.String(length=64), nullable=True),
        sa.Column("label", sa.String(length=120), nullable=False),
        sa.Column("offer_id", sa.String(length=64), nullable=False),
        sa.Column("machine_id", sa.BigInteger(), nullable=False),
        sa.Column("gpu_name", sa.String(length=100), nullable=False),
        sa.Column("price_per_h_musd", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status_msg", sa.Text(), nullable=False),
        sa.Column("worker_url", sa.String(length=300), nullable=True),
        sa.Column("worker_token", sa.String(length=100), nullable=False),
        sa.Column("tls_cert_pem", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_busy_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("destroy_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("logs", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_instances_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
        sa.UniqueConstraint("label", name=op.f("uq_instances_label")),
    )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instances_provider_instance_id"), ["provider_instance_id"], unique=False)
        batch_op.create_index("ix_instances_state", ["state"], unique=False)
        batch_op.create_index("ix_instances_tenant_state", ["tenant_id", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index("ix_instances_tenant_state")
        batch_op.drop_index("ix_instances_state")
        batch_op.drop_index(batch_op.f("ix_instances_provider_instance_id"))

    op.drop_table("instances")
    op.drop_table("excluded_machines")
