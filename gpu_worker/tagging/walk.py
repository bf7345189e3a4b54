"""Find the media files of a folder tree, in a deterministic order, by their first bytes.

Hidden entries (dot names, Windows hidden/system attributes), NAS and recycle-bin folders, symbolic links, our own
state folder and backups are skipped; what cannot be read is reported, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from gpu_worker.contract import MediaKind
from gpu_worker.sniff import SNIFF_BYTES, sniff
from gpu_worker.tagging.layout import BACKUP_SUFFIX, STATE_DIR_NAME

# Folders that photo collections carry but that hold no one's photos (Synology thumbnails, recycle bins).
SKIPPED_DIR_NAMES = frozenset({"@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN", "System Volume Information"})
_HIDDEN_ATTRIBUTES = getattr(stat, "FILE_ATTRIBUTE_HIDDEN", 2) | getattr(stat, "FILE_ATTRIBUTE_SYSTEM", 4)
HASH_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class MediaFile:
    """One media file: its path, its path relative to the root (``/``-separated), and what its bytes say it is."""

    path: Path
    relative: str
    kind: MediaKind
    mime: str


@dataclass(frozen=True)
class WalkProblem:
    """A file or folder that could not be read."""

    relative: str
    reason: str


@dataclass
class WalkResult:
    """Media files in walk order, and what could not be read."""

    files: list[MediaFile] = field(default_factory=list)
    problems: list[WalkProblem] = field(default_factory=list)


def walk_media(root: Path, kinds: Collection[MediaKind]) -> WalkResult:
    """Every file under ``root`` whose bytes make it media of one of ``kinds``, sorted by path component."""
    result = WalkResult()
    _walk_dir(root, root, frozenset(kinds), result)
    return result


def _walk_dir(root: Path, folder: Path, kinds: frozenset[MediaKind], result: WalkResult) -> None:
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as exc:
        result.problems.append(WalkProblem(_relative(root, folder), f"cannot list folder: {exc.strerror or exc}"))
        return
    for entry in entries:
        if _skipped(entry):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                _walk_dir(root, path, kinds, result)
                continue
            if not entry.is_file(follow_symlinks=False) or entry.name.endswith(BACKUP_SUFFIX):
                continue
            with path.open("rb") as handle:
                head = handle.read(SNIFF_BYTES)
        except OSError as exc:
            result.problems.append(WalkProblem(_relative(root, path), f"cannot read: {exc.strerror or exc}"))
            continue
        found = sniff(head)
        if found is not None and found.kind in kinds:
            result.files.append(MediaFile(path, _relative(root, path), found.kind, found.mime))


def _skipped(entry: os.DirEntry[str]) -> bool:
    if entry.name == STATE_DIR_NAME or entry.name.startswith(".") or entry.name in SKIPPED_DIR_NAMES:
        return True
    if entry.is_symlink():  # a linked folder can loop, and os.replace would swap a link for a file
        return True
    if sys.platform != "win32":  # hidden and system attributes exist only there
        return False
    try:
        attributes = getattr(entry.stat(follow_symlinks=False), "st_file_attributes", 0)
    except OSError:
        return False  # reported when the entry is read
    return bool(attributes & _HIDDEN_ATTRIBUTES)


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix() or "."


def hash_file(path: Path) -> str:
    """The sha256 of a file's content, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
