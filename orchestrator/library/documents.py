"""Between database rows and sidecar documents, both ways, without I/O.

Export turns an asset's rows (results, tags, embeddings, faces and their people) into a version 2 sidecar; import
turns a sidecar back into the rows to write. Embeddings travel as JSON numbers: a float32 widened to a double prints
exactly and narrows back to the same float32, so a vector survives the round trip bit for bit.
"""

from __future__ import annotations

import math
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gpu_worker import __version__
from gpu_worker.sidecar_schema import (
    AnalyzerRecord,
    FileRecord,
    JobRecord,
    LibraryRecord,
    PersonAssignment,
    Sidecar,
    SidecarTag,
)
from orchestrator.db.models import Asset, Embedding, Face, Job, Person, Result, ResultTag

GENERATOR = f"ai-media-analysis orchestrator {__version__}"
FACES_ANALYZER = "faces"
MAX_TAG_CHARS = 200  # the width of result_tags.tag


def float32_bytes(values: Sequence[float]) -> bytes:
    """A vector as stored in the database: float32, little-endian."""
    return np.asarray(values, dtype="<f4").tobytes()


def float32_values(data: bytes) -> list[float]:
    """The inverse of :func:`float32_bytes`."""
    return [float(v) for v in np.frombuffer(data, dtype="<f4")]


@dataclass(frozen=True)
class AssetRows:
    """Everything the database holds about one asset that a sidecar carries."""

    asset: Asset
    job: Job
    results: Sequence[Result]
    tags: Sequence[ResultTag]
    embeddings: Sequence[Embedding]
    faces: Sequence[Face]
    people: Mapping[uuid.UUID, Person]


def asset_sidecar(rows: AssetRows, *, file_sha256: str | None) -> Sidecar:
    """The version 2 sidecar of one asset; ``file_sha256`` is the hash of the bytes exported beside it."""
    asset, job = rows.asset, rows.job
    analyzers: dict[str, AnalyzerRecord] = {}
    for result in sorted(rows.results, key=lambda r: r.analyzer):
        analyzers[result.analyzer] = AnalyzerRecord(model_id=result.model_id, payload=dict(result.payload))
    for embedding in rows.embeddings:
        record = analyzers.setdefault(embedding.analyzer, AnalyzerRecord(model_id=embedding.model_id))
        record.embedding = float32_values(embedding.vector)
    for tag in sorted(rows.tags, key=lambda t: (-t.score, t.tag)):
        analyzers.setdefault(tag.analyzer, AnalyzerRecord(model_id="")).tags.append(
            SidecarTag(tag=tag.tag, score=tag.score)
        )
    analyzed = [r.updated_at for r in rows.results]
    people = [
        PersonAssignment(
            face_index=face.face_index,
            person_id=str(face.person_id) if face.person_id is not None else None,
            person_name=_person_name(rows.people, face.person_id),
            assigned_by=face.assigned_by,
        )
        for face in sorted(rows.faces, key=lambda f: f.face_index)
        if face.person_id is not None or face.assigned_by is not None
    ]
    return Sidecar(
        generator=GENERATOR,
        file=FileRecord(
            name=asset.original_name,
            sha256=asset.sha256,
            file_sha256=file_sha256,
            size_bytes=asset.size_bytes,
            media_kind=asset.media_kind,
            mime=asset.mime_type,
            width=asset.width,
            height=asset.height,
            duration_s=asset.duration_s,
        ),
        analyzed_at=max(analyzed) if analyzed else None,
        analyzers=analyzers,
        library=LibraryRecord(
            asset_id=str(asset.id),
            job=JobRecord(
                id=str(job.id),
                name=job.name,
                created_at=job.created_at,
                analyzers=list(job.analyzers),
                options=dict(job.options),
            ),
            created_at=asset.created_at,
            status=str(asset.status),
            error_code=asset.error_code,
            error_message=asset.error_message,
            people=people,
        ),
    )


def _person_name(people: Mapping[uuid.UUID, Person], person_id: uuid.UUID | None) -> str | None:
    person = people.get(person_id) if person_id is not None else None
    return person.name if person is not None else None


@dataclass(frozen=True)
class TagRow:
    """One tag to store for an analyzer."""

    tag: str
    score: float


@dataclass(frozen=True)
class AnalyzerRows:
    """The rows of one analyzer's result to store: the result, its tags, its embedding (float32 bytes) if any."""

    analyzer: str
    model_id: str
    payload: dict[str, Any]
    tags: list[TagRow]
    embedding: bytes | None
    dim: int


def analyzer_rows(sidecar: Sidecar) -> list[AnalyzerRows]:
    """The result rows a sidecar describes. A tag longer than the column is cut, as when results are written; of
    two equal tags the first (the best) is kept."""
    rows = []
    for name, record in sorted(sidecar.analyzers.items()):
        tags: dict[str, TagRow] = {}
        for tag in record.tags:
            cut = clean_text(tag.tag, MAX_TAG_CHARS)
            if cut and cut not in tags and math.isfinite(tag.score):
                tags[cut] = TagRow(cut, tag.score)
        vector = record.embedding
        usable = bool(vector) and all(math.isfinite(v) for v in vector or ())
        rows.append(
            AnalyzerRows(
                analyzer=clean_text(name, 32) or "unnamed",
                model_id=clean_text(record.model_id, 200) or "",
                payload=dict(record.payload),
                tags=list(tags.values()),
                embedding=float32_bytes(vector) if usable and vector else None,
                dim=len(vector) if usable and vector else 0,
            )
        )
    return rows


def clean_text(value: str | None, limit: int) -> str | None:
    """A short text from a document as a column may hold it: control characters removed (PostgreSQL refuses NUL
    in text), cut to ``limit``; None when nothing is left."""
    if value is None:
        return None
    cleaned = "".join(ch for ch in value if unicodedata.category(ch) != "Cc" or ch in "\n\t")[:limit]
    return cleaned or None


def parse_uuid(value: str | None) -> uuid.UUID | None:
    """A UUID from a sidecar field, or None when it is absent or not one."""
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def aware(value: datetime | None) -> datetime | None:
    """A timezone-aware datetime (a naive one from a document is read as UTC), as the database requires."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
