"""The manifest of a backup folder: what each part is, its sha256 and size, the schema revision and the time.
A backup is usable only when every listed part is present with the recorded size and checksum."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from orchestrator.errors import MediaAnalysisError

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PG_DUMP_FILE = "database.pgdump"
SQLITE_FILE = "database.sqlite"
MEDIA_FILE = "media.tar"
HASH_CHUNK_BYTES = 1024 * 1024


class BackupError(MediaAnalysisError):
    """A backup could not be made, or a backup folder cannot be restored (missing, altered, incompatible)."""

    code = "backup_failed"


class DatabaseKind(StrEnum):
    """The database engines a backup can hold."""

    POSTGRESQL = "postgresql"
    SQLITE = "sqlite"


DATABASE_FILES = {DatabaseKind.POSTGRESQL: PG_DUMP_FILE, DatabaseKind.SQLITE: SQLITE_FILE}


@dataclass(frozen=True)
class BackupPart:
    """One file of a backup: its sha256 (hex) and size in bytes."""

    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class BackupManifest:
    """What a backup folder holds. ``created_at`` is an ISO 8601 UTC time; ``parts`` maps file names to parts."""

    created_at: str
    database_kind: DatabaseKind
    alembic_revision: str | None
    parts: dict[str, BackupPart]
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The manifest as indented JSON."""
        document = {
            "format_version": self.format_version,
            "created_at": self.created_at,
            "database_kind": self.database_kind.value,
            "alembic_revision": self.alembic_revision,
            "parts": {
                name: {"sha256": part.sha256, "size_bytes": part.size_bytes}
                for name, part in sorted(self.parts.items())
            },
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BackupManifest:
        """Parse a manifest; raises :class:`BackupError` naming what is wrong with it."""
        try:
            document: Any = json.loads(text)
            version = document["format_version"]
            if version != FORMAT_VERSION:
                raise BackupError(f"backup format {version} is not supported (this program reads {FORMAT_VERSION})")
            return cls(
                created_at=str(document["created_at"]),
                database_kind=DatabaseKind(document["database_kind"]),
                alembic_revision=document["alembic_revision"],
                parts={
                    str(name): BackupPart(sha256=str(part["sha256"]), size_bytes=int(part["size_bytes"]))
                    for name, part in document["parts"].items()
                },
                format_version=version,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackupError(f"the manifest is not readable: {exc}") from exc


def file_part(path: Path) -> BackupPart:
    """Checksum and size of the file at ``path``."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return BackupPart(sha256=digest.hexdigest(), size_bytes=size)


def verify_backup(folder: Path) -> BackupManifest:
    """Read ``folder``'s manifest and check every part against it; raises :class:`BackupError` on the first
    problem (a missing folder, manifest or part, a size or checksum that differs, a part the database needs)."""
    manifest_path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise BackupError(f"{folder} is not a backup folder")
    if not manifest_path.is_file():
        raise BackupError(f"{folder} has no {MANIFEST_FILE}: not a backup, or an unfinished one")
    manifest = BackupManifest.from_json(manifest_path.read_text(encoding="utf-8"))
    required = {DATABASE_FILES[manifest.database_kind], MEDIA_FILE}
    missing = sorted(required - manifest.parts.keys())
    if missing:
        raise BackupError(f"the manifest lists no {', '.join(missing)}")
    for name, expected in sorted(manifest.parts.items()):
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise BackupError(f"part {name} is missing from {folder}")
        found = file_part(path)
        if found != expected:
            raise BackupError(
                f"part {name} is damaged: sha256 {found.sha256[:12]}… and {found.size_bytes} bytes, "
                f"the manifest says {expected.sha256[:12]}… and {expected.size_bytes} bytes"
            )
    return manifest
