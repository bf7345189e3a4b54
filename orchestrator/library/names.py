"""File and folder names in an exported library: derived from untrusted display names, always one safe path component.

Pure functions. A safe name has no separator, no ``..``, no control or format character, does not start with a dot
(hidden files are skipped on import), is not a Windows device name, never ends like a sidecar, and stays short
enough for every common file system once ``.ai.json`` is appended.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Collection
from datetime import datetime

from gpu_worker.tagging.layout import JSON_SIDECAR_SUFFIX, XMP_SIDECAR_SUFFIX

# 255 bytes is the usual limit of one component (ext4, NTFS in UTF-16 units); the sidecar suffix and a " (99)"
# de-duplication must still fit, in UTF-8, where one character can take 4 bytes.
MAX_NAME_BYTES = 200
MAX_FOLDER_NAME_BYTES = 60
SHORT_ID_CHARS = 8
# Characters that Windows, macOS or a shell treat specially in a file name.
_UNSAFE_CHARS = re.compile(r'[<>:"/\\|?*]')
# Windows also reserves COM and LPT with superscript digits, and CONIN$/CONOUT$; "nul .txt" is NUL too (the part
# before the first dot counts, without trailing spaces).
_WINDOWS_PORTS = tuple(f"{port}{n}" for port in ("com", "lpt") for n in "0123456789¹²³")
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", "conin$", "conout$", *_WINDOWS_PORTS})
# What the importer reads as something other than media.
_RESERVED_SUFFIXES = (JSON_SIDECAR_SUFFIX, XMP_SIDECAR_SUFFIX, ".orig", ".part", ".tmp")


def _clean(raw: str) -> str:
    text = unicodedata.normalize("NFC", raw)
    text = "".join(" " if unicodedata.category(ch) in ("Zs", "Zl", "Zp") else ch for ch in text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = _UNSAFE_CHARS.sub("_", text)
    return " ".join(text.split()).strip(" .")


def _fit_bytes(name: str, limit: int) -> str:
    """Shorten ``name`` to at most ``limit`` UTF-8 bytes, keeping a short extension."""
    if len(name.encode()) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext) > 10:
        stem, ext = name, ""
    keep = limit - len(ext.encode()) - (1 if ext else 0)
    cut = stem.encode()[:keep].decode(errors="ignore").rstrip(" .")
    return f"{cut}.{ext}" if ext else cut


def safe_component(raw: str | None, *, fallback: str = "unnamed", limit_bytes: int = MAX_NAME_BYTES) -> str:
    """One safe path component from an untrusted name (any path parts before the last are dropped)."""
    last = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _fit_bytes(_clean(last), limit_bytes)
    if not name or name in (".", ".."):
        name = fallback
    if name.split(".", 1)[0].rstrip(" ").casefold() in _WINDOWS_DEVICES:
        name = f"_{name}"
    lowered = name.casefold()
    if any(lowered.endswith(suffix) for suffix in _RESERVED_SUFFIXES):
        name = f"{name}_"
    return name


def deduplicated(name: str, taken: Collection[str]) -> str:
    """``name``, or ``stem (2).ext``, ``stem (3).ext``... if a name equal up to case is in ``taken`` (case-folded)."""
    if name.casefold() not in taken:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, dot, ext = name, "", ""
    number = 2
    while True:
        candidate = f"{stem} ({number}){dot}{ext}"
        if candidate.casefold() not in taken:
            return candidate
        number += 1


def asset_file_name(original_name: str | None, taken: set[str]) -> str:
    """The name of an asset's file in its job folder: safe, unique within the folder (``taken`` holds the case-folded
    names already given there and is updated)."""
    name = deduplicated(safe_component(original_name), taken)
    taken.add(name.casefold())
    return name


def job_folder_name(name: str, created_at: datetime, job_id: uuid.UUID) -> str:
    """``<job name or creation day>-<first 8 hex digits of the id>``: readable, and unique because of the id."""
    readable = safe_component(name, fallback="", limit_bytes=MAX_FOLDER_NAME_BYTES) or created_at.date().isoformat()
    return f"{readable}-{job_id.hex[:SHORT_ID_CHARS]}"
