"""Where tagging keeps its state and writes its files, next to each original (one place for every name)."""

from __future__ import annotations

import secrets
from enum import StrEnum
from pathlib import Path
from typing import Protocol

# The checkpoint lives here, inside the tagged folder, so that it travels with the folder.
STATE_DIR_NAME = ".ai-media-analysis"
CHECKPOINT_NAME = "checkpoint.sqlite"
# Temporary copies start with a dot (hidden, and never walked) and live next to their target so that os.replace is
# an atomic rename on the same file system.
TEMP_PREFIX = ".aimeta-"
JSON_SIDECAR_SUFFIX = ".ai.json"
# digiKam's and darktable's default sidecar name is the whole file name plus ".xmp" (photo.jpg.xmp).
XMP_SIDECAR_SUFFIX = ".xmp"
BACKUP_SUFFIX = ".orig"


class WriteTarget(StrEnum):
    """Where keywords go: into the file, into ``name.ext.xmp`` beside it, or nowhere (JSON sidecar only)."""

    XMP = "xmp"
    SIDECAR = "sidecar"
    NONE = "none"


def checkpoint_path(root: Path) -> Path:
    """The checkpoint database of the folder ``root``."""
    return root / STATE_DIR_NAME / CHECKPOINT_NAME


def json_sidecar_path(media: Path) -> Path:
    """``photo.jpg`` -> ``photo.jpg.ai.json``."""
    return media.with_name(media.name + JSON_SIDECAR_SUFFIX)


def xmp_sidecar_path(media: Path) -> Path:
    """``photo.jpg`` -> ``photo.jpg.xmp``."""
    return media.with_name(media.name + XMP_SIDECAR_SUFFIX)


def backup_path(target: Path) -> Path:
    """``photo.jpg`` -> ``photo.jpg.orig``."""
    return target.with_name(target.name + BACKUP_SUFFIX)


def temp_path_for(target: Path) -> Path:
    """A fresh hidden name beside ``target`` with the same suffix (exiftool picks the format of a new file by it).

    The name holds no part of the target's name: exiftool reads ``%`` in some names as format codes.
    """
    return target.with_name(f"{TEMP_PREFIX}{secrets.token_hex(8)}{target.suffix.lower()}")


class TempRegistry(Protocol):
    """Remembers temporary files so that a crashed run's leftovers can be removed (the checkpoint does this)."""

    def add_pending(self, temp: Path) -> None:
        """Called before ``temp`` is created."""

    def remove_pending(self, temp: Path) -> None:
        """Called once ``temp`` is gone (renamed into place or deleted)."""
