"""Find what a library folder holds: media files, the ``.ai.json`` sidecars beside them, and sidecars alone.

Never leaves the folder: symbolic links are not followed (neither to files nor to folders), hidden entries (dot
names, which include temporary files and the tagging checkpoint), NAS and recycle-bin folders, XMP sidecars,
backups and partial files are skipped. Media are recognised later by their bytes, never by their names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gpu_worker.tagging.layout import BACKUP_SUFFIX, JSON_SIDECAR_SUFFIX, XMP_SIDECAR_SUFFIX
from gpu_worker.tagging.walk import SKIPPED_DIR_NAMES

IGNORED_SUFFIXES = (XMP_SIDECAR_SUFFIX, BACKUP_SUFFIX, ".part", ".tmp", "~")
ROOT_MANIFEST = "library.json"


@dataclass(frozen=True)
class Entry:
    """A media file of the library (or, with ``media`` false, the absent file a lone sidecar describes): its path,
    its path relative to the root (``/``-separated), and its sidecar if any."""

    path: Path
    relative: str
    sidecar: Path | None = None
    media: bool = True


@dataclass
class FolderScan:
    """Files with or without a sidecar, sidecars whose media file is absent, and what could not be listed."""

    files: list[Entry] = field(default_factory=list)
    lone_sidecars: list[Entry] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def scan_folder(root: Path) -> FolderScan:
    """Every candidate under ``root`` in a stable order: a folder's files by name, then its subfolders by name."""
    scan = FolderScan()
    _scan(root, root, scan)
    return scan


def _scan(root: Path, folder: Path, scan: FolderScan) -> None:
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        scan.unreadable.append((_relative(root, folder), f"cannot list folder: {exc.strerror or exc}"))
        return
    files: dict[str, Path] = {}
    sidecars: dict[str, Path] = {}
    # Entries not read; a sidecar of one of them is not read either (it would describe a linked or hidden file).
    passed_over: set[str] = set()
    subfolders: list[Path] = []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name in SKIPPED_DIR_NAMES or entry.is_symlink():
            passed_over.add(name)
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(path)
                continue
            if not entry.is_file(follow_symlinks=False):
                passed_over.add(name)
                continue
        except OSError as exc:
            scan.unreadable.append((_relative(root, path), f"cannot read: {exc.strerror or exc}"))
            continue
        lowered = name.casefold()
        if lowered.endswith(JSON_SIDECAR_SUFFIX):
            sidecars[name[: -len(JSON_SIDECAR_SUFFIX)]] = path
        elif not lowered.endswith(IGNORED_SUFFIXES) and not (folder == root and name == ROOT_MANIFEST):
            files[name] = path
    for name, path in files.items():
        scan.files.append(Entry(path, _relative(root, path), sidecars.pop(name, None)))
    for name, sidecar in sidecars.items():
        if name not in passed_over:
            scan.lone_sidecars.append(Entry(folder / name, _relative(root, folder / name), sidecar, media=False))
    for subfolder in subfolders:
        _scan(root, subfolder, scan)


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix() or "."
