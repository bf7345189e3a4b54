"""search documents with full-text indexes, people and faces, perceptual hashes, metadata write-back

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-21 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# SQLite: an external-content FTS5 table over search_documents.body, kept in step by triggers (the pattern of the
# SQLite FTS5 documentation, section 4.4.3). The porter stemmer matches PostgreSQL's 'english' configuration.
SQLITE_FTS = [
    "CREATE VIRTUAL TABLE search_fts USING fts5(body, content='search_documents', content_rowid='id', "
    "tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER search_documents_ai AFTER INSERT ON search_documents BEGIN "
    "INSERT INTO search_fts(rowid, body) VALUES (new.id, new.body); END",
    "CREATE TRIGGER search_documents_ad AFTER DELETE ON search_documents BEGIN "
    "INSERT INTO search_fts(search_fts, rowid, body) VALUES ('delete', old.id, old.body); END",
    "CREATE TRIGGER search_documents_au AFTER UPDATE ON search_documents BEGIN "
    "INSERT INTO search_fts(search_fts, rowid, body) VALUES ('delete', old.id, old.body); "
    "INSERT INTO search_fts(rowid, body) VALUES (new.id, new.body); END",
]
POSTGRES_FTS = "CREATE INDEX ix_search_documents_body_fts ON search_documents USING gin (to_tsvector('english', body))"


def upgrade() -> None:
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phash", sa.String(length=16), nullable=True))

    op.create_table(
        "search_documents",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_search_documents_asset_id_assets"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_search_documents_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_documents")),
        sa.UniqueConstraint("asset_id", name=op.f("uq_search_documents_asset_id")),
    )
    with op.batch_alter_table("search_documents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_search_documents_tenant_id"), ["tenant_id"], unique=False)
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in SQLITE_FTS:
            op.execute(statement)
    elif bind.dialect.name == "postgresql":
        op.execute(POSTGRES_FTS)

    op.create_table(
        "people",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("centroid", sa.LargeBinary(), nullable=True),
        sa.Column("face_count", sa.Integer(), nullable=False),
        sa.Column("cover_face_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_people_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_people")),
    )
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.create_index("ix_people_tenant_name", ["tenant_id", "name"], unique=False)

    op.create_table(
        "faces",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("face_index", sa.Integer(), nullable=False),
        sa.Column("timestamp_s", sa.Float(), nullable=True),
        sa.Column("box", sa.JSON(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("person_id", sa.Uuid(), nullable=True),
        sa.Column("assigned_by", sa.String(length=8), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["asset_id"], ["assets.id"], name=op.f("fk_faces_asset_id_assets"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["person_id"], ["people.id"], name=op.f("fk_faces_person_id_people"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_faces_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_faces")),
        sa.UniqueConstraint("asset_id", "face_index", name=op.f("uq_faces_asset_id")),
    )
    with op.batch_alter_table("faces", schema=None) as batch_op:
        batch_op.create_index("ix_faces_tenant_person", ["tenant_id", "person_id"], unique=False)

    op.create_table(
        "metadata_writes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_metadata_writes_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metadata_writes")),
    )
    with op.batch_alter_table("metadata_writes", schema=None) as batch_op:
        batch_op.create_index("ix_metadata_writes_tenant_created", ["tenant_id", "created_at"], unique=False)

    op.create_table(
        "metadata_write_items",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("write_id", sa.Uuid(), nullable=False),
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("previous_storage_key", sa.String(length=300), nullable=True),
        sa.Column("previous_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("new_storage_key", sa.String(length=300), nullable=True),
        sa.Column("new_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("new_sha256", sa.String(length=64), nullable=True),
        sa.Column("written", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_metadata_write_items_asset_id_assets"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["write_id"],
            ["metadata_writes.id"],
            name=op.f("fk_metadata_write_items_write_id_metadata_writes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metadata_write_items")),
        sa.UniqueConstraint("write_id", "asset_id", name=op.f("uq_metadata_write_items_write_id")),
    )
    with op.batch_alter_table("metadata_write_items", schema=None) as batch_op:
        batch_op.create_index("ix_metadata_write_items_asset", ["asset_id"], unique=False)

    op.create_table(
        "duplicate_dismissals",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("group_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_duplicate_dismissals_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "group_key", name=op.f("pk_duplicate_dismissals")),
    )


def downgrade() -> None:
    op.drop_table("duplicate_dismissals")
    op.drop_table("metadata_write_items")
    op.drop_table("metadata_writes")
    op.drop_table("faces")
    op.drop_table("people")
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for trigger in ("search_documents_ai", "search_documents_ad", "search_documents_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS search_fts")
    op.drop_table("search_documents")
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.drop_column("phash")
