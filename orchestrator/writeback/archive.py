"""A job's current originals (with any written-back metadata) as one zip, streamed as it is built.

Names in the archive come from the uploaded names but can never leave the folder it is unpacked into: only the last
path segment is kept, control characters and separators are replaced, a name made only of dots is refused, and
repeated names get `` (2)``, `` (3)``, ... before the extension. Files are stored, not deflated (media are already
compressed), and written with data descriptors, so nothing needs to seek.
"""

from __future__ import annotations

import io
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from orchestrator.storage import LocalStorage

MAX_NAME_CHARS = 200
ZIP64_FROM_BYTES = 2**31 - 1
_FORBIDDEN = frozenset('/\\:*?"<>|')


@dataclass(frozen=True)
class ArchiveEntry:
    """One stored file to put in the archive under a name derived from ``original_name``."""

    original_name: str
    storage_key: str
    size_bytes: int
    fallback: str


def safe_name(original_name: str, fallback: str) -> str:
    """A file name that is safe as a zip member: one segment, no control characters, no '..', not empty."""
    last = original_name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(
        "_" if char in _FORBIDDEN or unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") else char for char in last
    ).strip()
    if cleaned.strip(".") == "":
        cleaned = fallback
    elif cleaned.startswith("."):
        cleaned = fallback + cleaned
    if len(cleaned) > MAX_NAME_CHARS:
        stem, dot, ext = cleaned.rpartition(".")
        cleaned = (
            (stem[: MAX_NAME_CHARS - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else cleaned[:MAX_NAME_CHARS]
        )
    return cleaned


def unique_names(entries: Iterable[ArchiveEntry]) -> list[tuple[str, ArchiveEntry]]:
    """Each entry with its archive name; names are unique ignoring case (case-insensitive file systems)."""
    used: set[str] = set()
    named = []
    for entry in entries:
        base = safe_name(entry.original_name, entry.fallback)
        stem, dot, ext = base.rpartition(".")
        if not dot or not stem:
            stem, dot, ext = base, "", ""
        name, number = base, 1
        while name.lower() in used:
            number += 1
            name = f"{stem} ({number}){dot}{ext}"
        used.add(name.lower())
        named.append((name, entry))
    return named


class _Sink(io.RawIOBase):
    """A write-only stream that hands what was written to the response, chunk by chunk."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def stream_zip(storage: LocalStorage, entries: Iterable[ArchiveEntry]) -> Iterator[bytes]:
    """The zip of ``entries`` as a stream of chunks; a file that vanished from the store is left out."""
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, entry in unique_names(entries):
            if not storage.exists(entry.storage_key):
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_STORED
            with archive.open(info, mode="w", force_zip64=entry.size_bytes >= ZIP64_FROM_BYTES) as member:
                for chunk in storage.iter_bytes(entry.storage_key):
                    member.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()
