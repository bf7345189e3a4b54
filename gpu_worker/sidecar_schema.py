"""The JSON sidecar (``photo.jpg.ai.json``) shared by ``gpu-worker tag`` and the library export/import.

Pure pydantic (no inference stack), so the orchestrator imports it as it imports :mod:`gpu_worker.contract`.

Versioning: ``schema_version`` is a major version. Additions that old readers can ignore (a new optional field)
keep it; anything that changes the meaning of an existing field bumps it. Readers upgrade every older major version
they know (version 1, the first ``gpu-worker tag`` format) and refuse newer ones with a message that says so.
Unknown keys are kept on read and written back unchanged, so a document passes through an older program intact.
The JSON Schema in ``docs/sidecar.schema.json`` is generated from these models: ``python -m gpu_worker.sidecar_schema``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_ID: Final = "ai-media-analysis/sidecar"
SCHEMA_VERSION: Final = 2
KNOWN_VERSIONS = (1, 2)
# A sidecar holds embeddings and payloads, not media: anything bigger is not one of ours.
MAX_SIDECAR_BYTES = 64 * 1024 * 1024


class SidecarError(ValueError):
    """A document that is not a sidecar this program can read; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SidecarVersionError(SidecarError):
    """A sidecar of a major version this program does not know (written by a newer one)."""


class _Open(BaseModel):
    """Keeps unknown keys (forward compatibility) and accepts fields by name as well as by alias."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SidecarTag(_Open):
    """One tag (``category/label``) with its score in [0, 1]."""

    tag: str
    score: float


class AnalyzerRecord(_Open):
    """What one analyzer produced: its model, tags, embedding (L2-normalised where the analyzer says so) and full
    analyzer-specific payload."""

    model_id: str
    tags: list[SidecarTag] = Field(default_factory=list)
    embedding: list[float] | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class ErrorRecord(_Open):
    """Why an analyzer failed on this file: a stable code and a readable message."""

    code: str
    message: str


class FileRecord(_Open):
    """The media file beside the sidecar. ``sha256`` is of the bytes that were analysed; ``file_sha256`` of the
    bytes beside the sidecar now (they differ when keywords were written into the file)."""

    name: str
    sha256: str | None = None
    file_sha256: str | None = None
    size_bytes: int | None = None
    media_kind: str | None = None
    mime: str | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


class JobRecord(_Open):
    """The job the file belonged to in the library it was exported from."""

    id: str
    name: str = ""
    created_at: datetime | None = None
    analyzers: list[str] | None = None
    options: dict[str, Any] | None = None


class PersonAssignment(_Open):
    """Which person one face (by its index in the faces payload) belongs to, and who decided (``auto``/``user``)."""

    face_index: int
    person_id: str | None = None
    person_name: str | None = None
    assigned_by: str | None = None


class LibraryRecord(_Open):
    """What the library knew about the file beyond the analysis: its ids, its job, its status, its people."""

    asset_id: str
    job: JobRecord
    created_at: datetime | None = None
    status: str
    error_code: str | None = None
    error_message: str | None = None
    people: list[PersonAssignment] = Field(default_factory=list)


class WrittenRecord(_Open):
    """What ``gpu-worker tag`` wrote as keywords: where (``xmp``, ``sidecar``, ``none``), in which mode, into which
    file (a name beside the media file), and the keywords by XMP field."""

    target: str
    mode: str
    keywords_in: str | None = None
    keywords: dict[str, list[str]] = Field(default_factory=dict)


class Sidecar(_Open):
    """One sidecar document, version 2."""

    schema_id: Literal["ai-media-analysis/sidecar"] = Field(default=SCHEMA_ID, alias="schema")
    schema_version: Literal[2] = SCHEMA_VERSION
    generator: str = ""
    file: FileRecord
    analyzed_at: datetime | None = None
    device: str | None = None
    analyzers: dict[str, AnalyzerRecord] = Field(default_factory=dict)
    errors: dict[str, ErrorRecord] = Field(default_factory=dict)
    library: LibraryRecord | None = None
    written: WrittenRecord | None = None
    # The keywords derived from the tags by XMP field, and tags refused as keywords (with why); written by tag.
    ai_keywords: dict[str, list[str]] | None = None
    rejected_tags: list[dict[str, str]] | None = None

    def to_document(self) -> dict[str, Any]:
        """The JSON-ready document: field names as published, optional sections left out when absent."""
        document = self.model_dump(mode="json", by_alias=True)
        for optional in ("library", "written", "ai_keywords", "rejected_tags"):
            if document.get(optional) is None:
                document.pop(optional, None)
        return document


def upgrade_v1(document: Mapping[str, Any]) -> dict[str, Any]:
    """A version 1 document (flat file fields) as version 2; every key it does not move is kept."""
    moved = {"schema_version", "file", "media_kind", "mime", "sha256", "file_sha256"}
    upgraded = {key: value for key, value in document.items() if key not in moved}
    name = document.get("file")
    upgraded["file"] = {
        "name": name if isinstance(name, str) else "",
        "sha256": document.get("sha256"),
        "file_sha256": document.get("file_sha256"),
        "media_kind": document.get("media_kind"),
        "mime": document.get("mime"),
    }
    upgraded["schema"] = SCHEMA_ID
    upgraded["schema_version"] = SCHEMA_VERSION
    return upgraded


def parse_sidecar(document: object) -> Sidecar:
    """Validate a decoded sidecar of any known version, upgraded to the current one; SidecarError if it is not."""
    if not isinstance(document, Mapping):
        raise SidecarError("not a JSON object")
    schema = document.get("schema", SCHEMA_ID)
    if schema != SCHEMA_ID:
        raise SidecarError(f"schema {schema!r} is not {SCHEMA_ID!r}")
    version = document.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SidecarError("schema_version is missing or not an integer")
    if version not in KNOWN_VERSIONS:
        newest = max(KNOWN_VERSIONS)
        if version > newest:
            raise SidecarVersionError(
                f"schema_version {version} is newer than this program reads (up to {newest}); upgrade it to read it"
            )
        raise SidecarVersionError(
            f"schema_version {version} is not a known version ({', '.join(map(str, KNOWN_VERSIONS))})"
        )
    data = upgrade_v1(document) if version == 1 else dict(document)
    try:
        return Sidecar.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        raise SidecarError(f"{where}: {first['msg']} ({exc.error_count()} problem(s))") from exc


def read_sidecar(path: Path) -> Sidecar:
    """Read and validate the sidecar at ``path``; SidecarError (with the reason) for anything unreadable."""
    try:
        size = path.stat().st_size
        if size > MAX_SIDECAR_BYTES:
            raise SidecarError(f"{size} bytes, over the limit of {MAX_SIDECAR_BYTES} for a sidecar")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SidecarError("not UTF-8 text") from exc
    except OSError as exc:
        raise SidecarError(f"cannot read: {exc.strerror or exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SidecarError(f"not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    return parse_sidecar(document)


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of version 2 documents (``docs/sidecar.schema.json``)."""
    schema = Sidecar.model_json_schema(by_alias=True, mode="validation")
    # Defaults make writing convenient; a document without them is still not a sidecar.
    schema["required"] = ["schema", "schema_version", *schema.get("required", [])]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:ai-media-analysis:sidecar:2",
        **schema,
        "title": "AI Media Analysis sidecar, version 2",
    }


def json_schema_text() -> str:
    """The JSON Schema as the text of ``docs/sidecar.schema.json``."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(json_schema_text())
