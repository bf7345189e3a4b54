"""The media store as one tar archive: written as a stream while its sha256 is computed, extracted with tarfile's
``data`` filter (no absolute paths, no links or files outside the target)."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

from orchestrator.backup.manifest import BackupError, BackupPart

# Partial uploads live here; they are not media and are never restored.
SKIPPED_TOP_LEVEL = frozenset({"tmp"})


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target: Path) -> None:
        self._handle = target.open("wb")
        self._digest = hashlib.sha256()
        self.size_bytes = 0

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.size_bytes += len(data)
        return self._handle.write(data)

    def close(self) -> BackupPart:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        return BackupPart(sha256=self._digest.hexdigest(), size_bytes=self.size_bytes)


def media_files(media_dir: Path) -> list[Path]:
    """Every stored file under ``media_dir`` (relative paths, sorted), partial uploads left out."""
    if not media_dir.is_dir():
        return []
    found: list[Path] = []
    for folder, subfolders, files in os.walk(media_dir):
        relative = Path(folder).relative_to(media_dir)
        if relative == Path():
            subfolders[:] = [name for name in subfolders if name not in SKIPPED_TOP_LEVEL]
        subfolders.sort()
        found.extend(relative / name for name in sorted(files))
    return found


def archive_media(media_dir: Path, target: Path) -> BackupPart:
    """Write ``media_dir``'s files to the tar archive ``target``; returns its checksum and size."""
    writer = _HashingWriter(target)
    try:
        with tarfile.open(fileobj=writer, mode="w|") as archive:  # type: ignore[call-overload]
            for relative in media_files(media_dir):
                archive.add(media_dir / relative, arcname=relative.as_posix(), recursive=False)
    finally:
        part = writer.close()
    return part


def extract_media(archive_path: Path, target: Path) -> None:
    """Extract the archive into the new folder ``target``; raises :class:`BackupError` for an unsafe or broken one."""
    target.mkdir(parents=True)
    try:
        with tarfile.open(archive_path, mode="r:") as archive:
            archive.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise BackupError(f"the media archive cannot be extracted: {exc}") from exc
