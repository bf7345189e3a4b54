"""Copy-on-write of one stored original: copy it, write the planned XMP into the copy with exiftool, read it back and
verify it, and store it under a new key. The stored original is never modified, so undo is exact.

No text of a user ever becomes an exiftool argument: keyword lists and regions travel in a JSON file that exiftool
imports (``-json=FILE``), whose values are written literally; the only arguments are fixed option names and
absolute paths we generate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_worker.contract import MediaKind
from gpu_worker.tagging.exiftool import ExifTool, path_argument
from gpu_worker.tagging.keywords import Keywords, TagMode, XmpField, empty_keywords
from orchestrator.media_probe import ProbeError, probe
from orchestrator.storage import LocalStorage
from orchestrator.writeback.plan import (
    REGION_FIELD,
    WRITABLE_MIMES,
    AssetPlan,
    FileEdit,
    existing_regions,
    plan_file_edit,
    same_region,
    written_summary,
)
from orchestrator.writeback.states import ItemStatus, WriteFailedError

READ_ARGUMENTS = ("-json", "-struct", "-G1", *(f"-{f}" for f in XmpField), f"-{REGION_FIELD}")
# exiftool needs its large-file switch for videos over 2 GiB; it is harmless below.
WRITE_OPTIONS = ("-overwrite_original", "-api", "LargeFileSupport=1")
# Metadata is a few KiB; a copy that grew or shrank by more than this (plus 1 %) was damaged.
SIZE_SLACK_BYTES = 1024 * 1024
EXIFTOOL_SECONDS_PER_GIB = 60.0
HASH_CHUNK_BYTES = 1024 * 1024
WRITTEN_SEGMENT = "written"


@dataclass(frozen=True)
class FileWrite:
    """The outcome for one file: WRITTEN with the new copy's key, size and hash, or UNCHANGED."""

    status: ItemStatus
    written: dict[str, Any]
    key: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class SourceFile:
    """The stored file a write starts from, and what it must still look like after the write."""

    key: str
    mime: str
    kind: MediaKind
    width: int | None = None
    height: int | None = None


def written_key(tenant_id: uuid.UUID, write_id: uuid.UUID, sha256: str) -> str:
    """Storage key of a copy written by one write-back: per tenant and write-back, named by its content."""
    return f"tenants/{tenant_id.hex}/{WRITTEN_SEGMENT}/{write_id.hex}/{sha256}"


def is_written_key(key: str) -> bool:
    """Whether a key names a written copy (only those are ever deleted by undo; uploads never are)."""
    parts = key.split("/")
    return len(parts) == 5 and parts[0] == "tenants" and parts[2] == WRITTEN_SEGMENT


def read_metadata(exiftool: ExifTool, path: Path) -> tuple[Keywords, Any]:
    """The file's three keyword lists and its RegionInfo structure (None when it has none)."""
    result = exiftool.execute([*READ_ARGUMENTS, path_argument(path)])
    if result.status != 0:
        raise WriteFailedError(f"exiftool cannot read the file: {_clean(result.error, path)}")
    try:
        # Numbers are read as text: a keyword "007" stays "007"; areas are compared as numbers later.
        documents = json.loads(result.stdout, parse_int=str, parse_float=str)
    except ValueError as exc:
        raise WriteFailedError("exiftool printed no metadata for the file") from exc
    document: dict[str, Any] = documents[0] if documents else {}
    keywords = empty_keywords()
    for xmp_field in XmpField:
        value = document.get(str(xmp_field), [])
        keywords[xmp_field] = [_text(v) for v in (value if isinstance(value, list) else [value])]
    return keywords, document.get(REGION_FIELD)


def write_copy(
    exiftool: ExifTool,
    storage: LocalStorage,
    *,
    source: SourceFile,
    plan: AssetPlan,
    mode: TagMode,
    tenant_id: uuid.UUID,
    write_id: uuid.UUID,
    max_pixels: int,
) -> FileWrite:
    """Write ``plan`` into a copy of ``source`` and store the verified copy under a new key; the source is never
    touched. Raises :class:`WriteFailedError` (or exiftool's error) with the reason when the file cannot be written."""
    original = storage.path_for(source.key)
    token = uuid.uuid4().hex
    temp = storage.root / "tmp" / f"wb-{token}{WRITABLE_MIMES[source.mime]}"
    imports = storage.root / "tmp" / f"wb-{token}.json"
    try:
        original_size = _copy(original, temp)
        keywords, region_info = read_metadata(exiftool, temp)
        edit = plan_file_edit(plan, existing_keywords=keywords, existing_region_info=region_info, mode=mode)
        if not edit.changed:
            return FileWrite(ItemStatus.UNCHANGED, written_summary(plan, edit))
        arguments = [f"-{f}=" for f in edit.clear_keywords]
        if edit.clear_regions:
            arguments.append(f"-{REGION_FIELD}=")
        document: dict[str, Any] = {str(f): values for f, values in edit.set_keywords.items()}
        if edit.region_info is not None:
            document[REGION_FIELD] = edit.region_info
        if document:
            imports.write_text(json.dumps([{"SourceFile": "*", **document}], ensure_ascii=False), encoding="utf-8")
            arguments.append(f"-json={path_argument(imports)}")
        timeout_s = exiftool.timeout_s + EXIFTOOL_SECONDS_PER_GIB * original_size / 1024**3
        result = exiftool.execute([*arguments, *WRITE_OPTIONS, path_argument(temp)], timeout_s=timeout_s)
        if result.status != 0:
            raise WriteFailedError(f"exiftool could not write the metadata: {_clean(result.error, temp)}")
        _verify(exiftool, temp, edit, source=source, original_size=original_size, max_pixels=max_pixels)
        sha256, size = _hash(temp)
        key = written_key(tenant_id, write_id, sha256)
        target = storage.path_for(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            temp.replace(target)
        return FileWrite(ItemStatus.WRITTEN, written_summary(plan, edit), key=key, size_bytes=size, sha256=sha256)
    finally:
        for leftover in (temp, temp.with_name(temp.name + "_exiftool_tmp"), imports):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def _verify(
    exiftool: ExifTool, temp: Path, edit: FileEdit, *, source: SourceFile, original_size: int, max_pixels: int
) -> None:
    size = temp.stat().st_size
    if size == 0 or abs(size - original_size) > SIZE_SLACK_BYTES + original_size // 100:
        raise WriteFailedError(f"the written copy is {size} bytes, the original {original_size}")
    keywords, region_info = read_metadata(exiftool, temp)
    for xmp_field in XmpField:
        if frozenset(keywords[xmp_field]) != edit.expected_keywords[xmp_field]:
            raise WriteFailedError(f"{xmp_field} reads back as {sorted(keywords[xmp_field])}")
    if edit.expected_regions is not None:
        found = existing_regions(region_info)
        if len(found) != len(edit.expected_regions) or not all(
            same_region(a, b) for a, b in zip(found, edit.expected_regions, strict=True)
        ):
            raise WriteFailedError("the face regions do not read back as written")
    try:
        info = probe(temp, source.kind, max_pixels=max_pixels)
    except ProbeError as exc:
        raise WriteFailedError(f"the written copy does not decode: {exc.message}") from exc
    if source.width and source.height and (info.width, info.height) != (source.width, source.height):
        raise WriteFailedError(
            f"the written copy decodes as {info.width}x{info.height}, the original as {source.width}x{source.height}"
        )


def _copy(source: Path, dest: Path) -> int:
    size = 0
    with source.open("rb") as reader, dest.open("xb") as writer:
        while chunk := reader.read(HASH_CHUNK_BYTES):
            writer.write(chunk)
            size += len(chunk)
    return size


def _hash(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as reader:
        while chunk := reader.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _clean(message: str, path: Path) -> str:
    """exiftool's message without our server path (users see it)."""
    return message.replace(path_argument(path), "the file").replace(str(path), "the file")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
