"""Create and restore whole backups. A backup appears under its final name only when complete (it is assembled in
a hidden folder beside it, then renamed); a restore checks everything first (checksums, schema revision, that it
replaces nothing unless forced) and touches the database and the media store only after all checks passed."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from orchestrator.backup.database import (
    database_kind,
    dump_database,
    inspect_database,
    restore_database,
)
from orchestrator.backup.manifest import (
    DATABASE_FILES,
    MANIFEST_FILE,
    MEDIA_FILE,
    BackupError,
    BackupManifest,
    file_part,
    verify_backup,
)
from orchestrator.backup.media import archive_media, extract_media, media_files
from orchestrator.db.migrate import alembic_config


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did: the backup's manifest and whether the database still needs ``orchestrator db upgrade``."""

    manifest: BackupManifest
    needs_upgrade: bool


def create_backup(dest: Path, *, database_url: str, media_dir: Path, now: datetime) -> BackupManifest:
    """Back up the database and the media store into the new folder ``dest``; ``now`` is recorded (UTC)."""
    if dest.exists():
        raise BackupError(f"{dest} exists already; give a new folder name")
    kind = database_kind(database_url)
    revision = inspect_database(database_url).alembic_revision
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(f".{dest.name}.partial-{uuid.uuid4().hex}")
    staging.mkdir()
    try:
        database_file = DATABASE_FILES[kind]
        dump_database(database_url, staging / database_file)
        parts = {database_file: file_part(staging / database_file)}
        parts[MEDIA_FILE] = archive_media(media_dir, staging / MEDIA_FILE)
        manifest = BackupManifest(
            created_at=now.isoformat(), database_kind=kind, alembic_revision=revision, parts=parts
        )
        (staging / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _check_revision_known(revision: str | None, database_url: str) -> bool:
    """Raise when this program does not know the backup's schema revision; True when it is not the newest."""
    scripts = ScriptDirectory.from_config(alembic_config(database_url))
    if revision is None:
        return True
    try:
        known = scripts.get_revision(revision)
    except CommandError as exc:
        raise BackupError(
            f"the backup's schema revision {revision} is unknown to this program: restore it with the version "
            "that made it, or a newer one"
        ) from exc
    if known is None:
        raise BackupError(f"the backup's schema revision {revision} is unknown to this program")
    return revision not in scripts.get_heads()


def restore_backup(src: Path, *, database_url: str, media_dir: Path, force: bool) -> RestoreReport:
    """Restore the backup folder ``src`` into the configured database and media store.

    Refuses, changing nothing, when the backup is damaged or incomplete, made on another database engine, from a
    schema this program does not know, or when the database holds rows or the media store holds files and
    ``force`` is not set. With ``force`` the existing data is replaced.
    """
    manifest = verify_backup(src)
    kind = database_kind(database_url)
    if manifest.database_kind is not kind:
        raise BackupError(f"the backup holds a {manifest.database_kind} database; this deployment uses {kind}")
    needs_upgrade = _check_revision_known(manifest.alembic_revision, database_url)
    state = inspect_database(database_url)
    if not force:
        occupied = [
            *(["the database has rows"] if state.has_rows else []),
            *([f"the media store {media_dir} has files"] if media_files(media_dir) else []),
        ]
        if occupied:
            raise BackupError(f"{' and '.join(occupied)}; pass --force to replace them with the backup")
    staging = media_dir.with_name(f".{media_dir.name}.restore-{uuid.uuid4().hex}")
    try:
        extract_media(src / MEDIA_FILE, staging)
        restore_database(database_url, src / DATABASE_FILES[kind], replace_schema=state.has_tables)
        _swap_folder(staging, media_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RestoreReport(manifest=manifest, needs_upgrade=needs_upgrade)


def _swap_folder(new: Path, live: Path) -> None:
    """Put ``new`` where ``live`` is, then delete the old contents (renames on one filesystem)."""
    retired = live.with_name(f".{live.name}.replaced-{uuid.uuid4().hex}")
    if live.exists():
        live.rename(retired)
    new.rename(live)
    shutil.rmtree(retired, ignore_errors=True)
