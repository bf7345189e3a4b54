"""The JSON sidecar (``photo.jpg.ai.json``): every analyzer's full result for one file, and what was written.

It is written atomically (a temporary file beside it, then ``os.replace``), so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gpu_worker import __version__
from gpu_worker.sidecar_schema import AnalyzerRecord, ErrorRecord, FileRecord, Sidecar, WrittenRecord
from gpu_worker.tagging.checkpoint import StoredAnalysis
from gpu_worker.tagging.keywords import RejectedTag, XmpField
from gpu_worker.tagging.layout import TempRegistry, json_sidecar_path, temp_path_for
from gpu_worker.tagging.walk import MediaFile

GENERATOR = f"ai-media-analysis gpu-worker {__version__}"


@dataclass(frozen=True)
class SidecarWrite:
    """How the keywords were stored: ``target`` (xmp, sidecar or none), where, and in which mode."""

    target: str
    mode: str
    keywords_in: Path | None = None
    keywords: Mapping[XmpField, list[str]] = field(default_factory=dict)


def sidecar_document(
    media: MediaFile,
    analysis: StoredAnalysis,
    *,
    source_sha256: str,
    final_sha256: str,
    tags: Mapping[XmpField, list[str]],
    rejected: list[RejectedTag],
    written: SidecarWrite,
) -> dict[str, Any]:
    """The sidecar's content (schema version 2, :mod:`gpu_worker.sidecar_schema`): the file, each analyzer's output
    (tags, embedding, payload) or error, and the writes."""
    result = analysis.result
    try:
        size_bytes: int | None = media.path.stat().st_size
    except OSError:
        size_bytes = None
    sidecar = Sidecar(
        generator=GENERATOR,
        file=FileRecord(
            name=media.path.name,
            sha256=source_sha256,
            file_sha256=final_sha256,
            size_bytes=size_bytes,
            media_kind=media.kind.value,
            mime=media.mime,
        ),
        analyzed_at=datetime.fromisoformat(analysis.analyzed_at),
        device=analysis.device,
        analyzers={
            name: AnalyzerRecord.model_validate(output.model_dump(mode="json"))
            for name, output in result.outputs.items()
        },
        errors={
            name: ErrorRecord.model_validate(error.model_dump(mode="json")) for name, error in result.errors.items()
        },
        ai_keywords={field.value: values for field, values in tags.items()},
        rejected_tags=[{"tag": r.tag, "reason": r.reason} for r in rejected],
        written=WrittenRecord(
            target=written.target,
            mode=written.mode,
            keywords_in=written.keywords_in.name if written.keywords_in is not None else None,
            keywords={field.value: values for field, values in written.keywords.items()},
        ),
    )
    return sidecar.to_document()


def write_json_sidecar(media: Path, document: Mapping[str, Any], registry: TempRegistry) -> Path:
    """Write ``document`` to ``media``'s JSON sidecar, atomically; returns its path."""
    path = json_sidecar_path(media)
    temp = temp_path_for(path)
    registry.add_pending(temp)
    try:
        with temp.open("x", encoding="utf-8") as handle:
            json.dump(document, handle, ensure_ascii=False, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        registry.remove_pending(temp)
    return path
