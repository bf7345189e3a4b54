"""`orchestrator backup create/restore` on real databases (PostgreSQL through pg_dump/pg_restore, SQLite through its
backup API) and a real media store: what is restored equals what was backed up, and a damaged or unwanted restore
changes nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, inspect, select, table
from typer.testing import CliRunner

from orchestrator.backup.manifest import MANIFEST_FILE, MEDIA_FILE
from orchestrator.cli import app
from orchestrator.db.models import Job
from orchestrator.db.session import get_engine, reset_engines, session_scope
from orchestrator.ingest import finish_upload
from orchestrator.jobs import create_job
from orchestrator.settings import get_settings
from orchestrator.storage import LocalStorage, thumbnail_key
from tests.fixtures.factories import jpeg_bytes, make_tenant, png_bytes
from tests.fixtures.services import PG_ADMIN_URL, OrchestratorEnv

pytestmark = pytest.mark.integration

runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def upload(job: Job, name: str, data: bytes) -> None:
    settings = get_settings()
    storage = LocalStorage(settings.media_dir)
    with session_scope() as session:
        staged = storage.stage(settings.max_upload_bytes)
        staged.write(data)
        outcome = finish_upload(
            session,
            storage=storage,
            job=session.merge(job),
            staged=staged,
            raw_name=name,
            max_upload_bytes=settings.max_upload_bytes,
            max_image_pixels=settings.max_image_pixels,
        )
        assert outcome.status == "accepted", outcome
        assert outcome.sha256 is not None
        storage.put_bytes(thumbnail_key(job.tenant_id, outcome.sha256), jpeg_bytes(16, 12))


def seed_deployment(label: str) -> None:
    """A tenant with a key, a job, two stored files with thumbnails, and a rejected file."""
    tenant = make_tenant(f"backup-{label}")
    with session_scope() as session:
        job = create_job(session, tenant_id=tenant.id, name=f"job {label}", default_analyzers=["clip"])
    upload(job, f"{label}-red.jpg", jpeg_bytes(color=(200, 10, 10)))
    upload(job, f"{label}-blue.png", png_bytes(color=(10, 10, 200)))
    upload_rejected = b"not media at all"
    settings = get_settings()
    storage = LocalStorage(settings.media_dir)
    with session_scope() as session:
        staged = storage.stage(settings.max_upload_bytes)
        staged.write(upload_rejected)
        outcome = finish_upload(
            session,
            storage=storage,
            job=session.merge(job),
            staged=staged,
            raw_name="notes.txt",
            max_upload_bytes=settings.max_upload_bytes,
            max_image_pixels=settings.max_image_pixels,
        )
        assert outcome.status == "rejected"


def row_counts() -> dict[str, int]:
    engine = get_engine()
    with engine.connect() as connection:
        names = inspect(connection).get_table_names()
        return {name: connection.execute(select(func.count()).select_from(table(name))).scalar_one() for name in names}


def media_digest() -> dict[str, str]:
    root = get_settings().media_dir
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).parts[0] != "tmp"
    }


def wipe_database(env: OrchestratorEnv) -> None:
    """Replace the deployment's database with an empty one of the same name (a new server, a lost disk)."""
    reset_engines()
    if env.database_url.startswith("sqlite"):
        path = Path(env.database_url.split("///", 1)[1])
        for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)
        return
    name = env.database_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def test_a_backup_restored_onto_an_empty_server_gives_back_every_row_and_file(
    orch_env: OrchestratorEnv, tmp_path: Path
) -> None:
    seed_deployment("one")
    seed_deployment("two")
    counts_before, media_before = row_counts(), media_digest()
    assert counts_before["assets"] == 6 and counts_before["tenants"] == 2
    assert len(media_before) == 8  # four blobs, four thumbnails
    dest = tmp_path / "backups" / "nightly"

    code, output = cli("backup", "create", str(dest))

    assert code == 0, output
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    assert manifest["alembic_revision"] and manifest["database_kind"] in ("sqlite", "postgresql")
    for name, part in manifest["parts"].items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == part["sha256"]
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")], "no partial folder is left behind"

    wipe_database(orch_env)
    shutil.rmtree(get_settings().media_dir)
    code, output = cli("backup", "restore", str(dest))

    assert code == 0, output
    reset_engines()
    assert row_counts() == counts_before
    assert media_digest() == media_before


def test_a_damaged_backup_is_refused_even_with_force_and_changes_nothing(
    orch_env: OrchestratorEnv, tmp_path: Path
) -> None:
    seed_deployment("live")
    dest = tmp_path / "backup"
    assert cli("backup", "create", str(dest))[0] == 0
    seed_deployment("after")
    counts_before, media_before = row_counts(), media_digest()
    archive = dest / MEDIA_FILE
    damaged = bytearray(archive.read_bytes())
    damaged[len(damaged) // 3] ^= 0xFF
    archive.write_bytes(bytes(damaged))

    code, output = cli("backup", "restore", "--force", str(dest))

    assert code == 1
    assert "media.tar is damaged" in output
    assert row_counts() == counts_before
    assert media_digest() == media_before
    assert not [p for p in get_settings().data_dir.iterdir() if p.name.startswith(".media")]


def test_a_backup_missing_a_part_is_refused(orch_env: OrchestratorEnv, tmp_path: Path) -> None:
    seed_deployment("x")
    dest = tmp_path / "backup"
    assert cli("backup", "create", str(dest))[0] == 0
    next(p for p in dest.iterdir() if p.name.startswith("database.")).unlink()

    code, output = cli("backup", "verify", str(dest))

    assert code == 1
    assert "is missing" in output


def test_restoring_over_live_data_needs_force_and_then_replaces_it(orch_env: OrchestratorEnv, tmp_path: Path) -> None:
    seed_deployment("kept")
    counts_at_backup, media_at_backup = row_counts(), media_digest()
    dest = tmp_path / "backup"
    assert cli("backup", "create", str(dest))[0] == 0
    seed_deployment("later")
    counts_now, media_now = row_counts(), media_digest()

    code, output = cli("backup", "restore", str(dest))

    assert code == 1
    assert "the database has rows" in output and "--force" in output
    assert (row_counts(), media_digest()) == (counts_now, media_now)

    code, output = cli("backup", "restore", "--force", str(dest))

    assert code == 0, output
    reset_engines()
    assert row_counts() == counts_at_backup
    assert media_digest() == media_at_backup


def test_create_refuses_an_existing_folder(orch_env: OrchestratorEnv, tmp_path: Path) -> None:
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")

    code, output = cli("backup", "create", str(dest))

    assert code == 1
    assert "exists already" in output
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
