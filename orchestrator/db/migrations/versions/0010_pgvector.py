"""pgvector side table for similarity search (PostgreSQL with the vector extension only)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-21 12:00:00.000000

Nothing happens on SQLite, or on a PostgreSQL server where the ``vector`` extension is not available: similarity
search then ranks exactly in memory (orchestrator/similarity/exact.py). Where it is available, the extension is
created (needs the right to CREATE EXTENSION; without it the step is skipped the same way), and so is
``vec_embeddings``: one row per ``embeddings`` row, removed with it, with partial HNSW indexes for the common CLIP
widths. Existing embeddings are copied in.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HNSW_DIMS = (512, 768)
CREATE_TABLE = """
CREATE TABLE vec_embeddings (
    embedding_id BIGINT PRIMARY KEY REFERENCES embeddings (id) ON DELETE CASCADE,
    tenant_id UUID NOT NULL,
    asset_id UUID NOT NULL,
    analyzer VARCHAR(32) NOT NULL,
    model_id VARCHAR(200) NOT NULL,
    dim INTEGER NOT NULL,
    v vector NOT NULL
)
"""
CREATE_FILTER_INDEX = "CREATE INDEX vec_embeddings_tenant ON vec_embeddings (tenant_id, analyzer, model_id, dim)"
CREATE_HNSW_INDEX = (
    "CREATE INDEX vec_embeddings_hnsw_{dim} ON vec_embeddings "
    "USING hnsw ((v::vector({dim})) vector_cosine_ops) WHERE dim = {dim}"
)


def _create_extension(bind: sa.Connection) -> bool:
    available = bind.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).scalar()
    if not available:
        return False
    savepoint = bind.begin_nested()
    try:
        bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except sa.exc.DBAPIError:  # e.g. no right to create extensions: similarity search stays exact
        savepoint.rollback()
        return False
    savepoint.commit()
    return True


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or not _create_extension(bind):
        return
    op.execute(CREATE_TABLE)
    op.execute(CREATE_FILTER_INDEX)
    for dim in HNSW_DIMS:
        op.execute(CREATE_HNSW_INDEX.format(dim=dim))
    tenants = bind.execute(sa.text("SELECT DISTINCT tenant_id FROM embeddings")).scalars().all()
    if tenants:
        from sqlalchemy.orm import Session

        from orchestrator.similarity.pgvector import sync_tenant

        session = Session(bind=bind)
        for tenant_id in tenants:
            sync_tenant(session, tenant_id=tenant_id)
        session.flush()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # The extension stays: dropping it could break other objects of the database that use it.
        op.execute("DROP TABLE IF EXISTS vec_embeddings")
