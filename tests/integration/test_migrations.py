"""The Alembic migrations are the only source of the schema, on SQLite (embedded) and on PostgreSQL (production)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, insert, inspect, text
from sqlalchemy.exc import IntegrityError

from orchestrator.db.migrate import alembic_config, downgrade, upgrade
from orchestrator.db.models import Asset, Base, Job, Tenant
from orchestrator.db.session import get_engine, reset_engines

MODEL_TABLES = set(Base.metadata.tables)
# Full-text and vector index structures that no model describes (see migration 0009 and later).
INDEX_TABLE_PREFIXES = ("search_fts", "vec_")
INDEX_ONLY_INDEXES = {"ix_search_documents_body_fts"}


def _is_index_table(name: str | None) -> bool:
    return bool(name) and str(name).startswith(INDEX_TABLE_PREFIXES)


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{(tmp_path / 'fresh.sqlite').as_posix()}"
        reset_engines()
    else:
        yield request.getfixturevalue("pg_url")


def _tables(engine: Engine) -> set[str]:
    return {name for name in inspect(engine).get_table_names() if not _is_index_table(name)}


def _include(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    if type_ == "index" and name in INDEX_ONLY_INDEXES:
        return False
    return not (type_ == "table" and _is_index_table(name))


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # Not even reflected: a vector column's type is unknown to SQLAlchemy and would warn.
    return not (type_ == "table" and _is_index_table(name))


def _schema_differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": _include, "include_name": _include_name}
        )
        return list(compare_metadata(context, Base.metadata))


def test_the_migrations_have_a_single_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()

    assert len(heads) == 1, heads


def test_upgrade_creates_every_model_table_and_matches_the_models(fresh_url: str) -> None:
    engine = get_engine(fresh_url)
    assert _tables(engine) == set()

    upgrade(fresh_url)

    assert _tables(engine) == MODEL_TABLES | {"alembic_version"}
    assert _schema_differences(engine) == []
    head = ScriptDirectory.from_config(alembic_config(fresh_url)).get_current_head()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head


def test_downgrade_to_base_removes_every_table_and_upgrade_works_again(fresh_url: str) -> None:
    engine = get_engine(fresh_url)
    upgrade(fresh_url)

    downgrade(fresh_url, "base")

    assert _tables(engine) <= {"alembic_version"}
    with engine.connect() as connection:
        if "alembic_version" in _tables(engine):
            assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 0

    upgrade(fresh_url)

    assert _tables(engine) == MODEL_TABLES | {"alembic_version"}
    assert _schema_differences(engine) == []


def test_upgrading_an_up_to_date_database_changes_nothing(fresh_url: str) -> None:
    upgrade(fresh_url)

    upgrade(fresh_url)

    assert _schema_differences(get_engine(fresh_url)) == []


def test_the_migrated_partial_unique_index_stores_each_blob_once_per_job_but_records_every_rejection(
    fresh_url: str,
) -> None:
    """Uploads rely on it: two stored assets with the same bytes in one job are refused by the database, while
    rejected files (no storage key) with the same hash are all recorded."""
    upgrade(fresh_url)
    engine = get_engine(fresh_url)
    tenant_id, job_id, sha = uuid.uuid4(), uuid.uuid4(), "ab" * 32
    with engine.begin() as connection:
        connection.execute(insert(Tenant).values(id=tenant_id, name="t"))
        connection.execute(insert(Job).values(id=job_id, tenant_id=tenant_id, analyzers=[], options={}, notices={}))
        for _ in range(2):
            connection.execute(insert(Asset).values(id=uuid.uuid4(), tenant_id=tenant_id, job_id=job_id, sha256=sha))
        connection.execute(
            insert(Asset).values(id=uuid.uuid4(), tenant_id=tenant_id, job_id=job_id, sha256=sha, storage_key="k")
        )

    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(
            insert(Asset).values(id=uuid.uuid4(), tenant_id=tenant_id, job_id=job_id, sha256=sha, storage_key="k")
        )
