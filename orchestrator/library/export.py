"""Export a tenant's library as files: one folder per job, each original beside its ``.ai.json`` sidecar.

The files are the source of truth and the database a rebuildable index: :mod:`orchestrator.library.importer` turns
such a folder back into the same jobs, assets, results and people. Every file is written atomically (a hidden
temporary file beside it, then a rename), originals before their sidecars, so an interrupted export leaves only
whole files; running it again skips every file whose sidecar already says what the database says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpu_worker.sidecar_schema import SCHEMA_VERSION
from gpu_worker.tagging.layout import JSON_SIDECAR_SUFFIX, TEMP_PREFIX
from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Embedding, Face, Job, Person, Result, ResultTag, Tenant
from orchestrator.errors import MediaAnalysisError, NotFoundError
from orchestrator.library.documents import GENERATOR, AssetRows, asset_sidecar
from orchestrator.library.names import asset_file_name, job_folder_name
from orchestrator.storage import READ_CHUNK_BYTES, LocalStorage

MANIFEST_NAME = "library.json"
MANIFEST_SCHEMA = "ai-media-analysis/library"
# Rows of one job are loaded this many assets at a time, so that no query carries an unbounded IN list.
ASSET_CHUNK = 500
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_R = TypeVar("_R", Result, ResultTag, Embedding, Face)

ProgressObserver = Callable[[int, int, str], None]
"""Called after each asset with (assets done, assets in all, the asset's path relative to the export folder)."""


class LibraryExportError(MediaAnalysisError):
    """The export cannot start (its folder is unusable)."""

    code = "library_export_failed"


@dataclass(frozen=True)
class ExportProblem:
    """A file that could not be exported, by its path relative to the export folder, and why."""

    path: str
    reason: str


@dataclass
class ExportSummary:
    """What an export did."""

    dest: Path
    jobs: int = 0
    assets: int = 0
    originals_written: int = 0
    sidecars_written: int = 0
    unchanged: int = 0
    problems: list[ExportProblem] = field(default_factory=list)


def export_library(
    session: Session,
    storage: LocalStorage,
    *,
    tenant_id: uuid.UUID,
    dest: Path,
    on_progress: ProgressObserver | None = None,
) -> ExportSummary:
    """Write every job and asset of the tenant under ``dest`` (created if needed) and ``library.json`` at its root.

    Reads the database only. A file that cannot be exported is reported in the summary and the rest goes on.
    """
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFoundError("tenant not found")
    dest = dest.absolute()
    _check_destination(dest, storage)
    summary = ExportSummary(dest=dest)
    people = {p.id: p for p in session.scalars(select(Person).where(Person.tenant_id == tenant_id))}
    total = session.scalar(select(func.count()).select_from(Asset).where(Asset.tenant_id == tenant_id)) or 0
    jobs = list(session.scalars(select(Job).where(Job.tenant_id == tenant_id).order_by(Job.created_at, Job.id)))
    counts = {"jobs": 0, "assets": 0, "originals": 0, "failed_assets": 0, "faces_assigned": 0}
    for job in jobs:
        folder_name = job_folder_name(job.name, job.created_at, job.id)
        folder = dest / folder_name
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            summary.problems.append(ExportProblem(folder_name, "exists and is not a folder; the job was not exported"))
            continue
        summary.jobs += 1
        counts["jobs"] += 1
        taken: set[str] = set()
        for rows in _job_rows(session, job=job, people=people):
            name = asset_file_name(rows.asset.original_name, taken)
            relative = f"{folder_name}/{name}"
            counts["assets"] += 1
            counts["originals"] += rows.asset.storage_key is not None
            counts["failed_assets"] += rows.asset.status == "failed"
            counts["faces_assigned"] += sum(face.person_id is not None for face in rows.faces)
            _export_asset(storage, rows, folder=folder, name=name, relative=relative, summary=summary)
            summary.assets += 1
            if on_progress is not None:
                on_progress(summary.assets, total, relative)
    counts["people"] = len(people)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "generator": GENERATOR,
        "tenant": tenant.name,
        "tenant_id": str(tenant.id),
        "exported_at": utcnow().isoformat(timespec="seconds"),
        "counts": counts,
        "problems": len(summary.problems),
    }
    _write_atomic(dest / MANIFEST_NAME, lambda handle: _dump_json(manifest, handle))
    return summary


def _check_destination(dest: Path, storage: LocalStorage) -> None:
    store = storage.root.absolute()
    if dest == store or store in dest.parents or dest in store.parents:
        raise LibraryExportError(f"{dest} overlaps the media store {store}; choose a folder outside it")
    if dest.exists() and not dest.is_dir():
        raise LibraryExportError(f"{dest} exists and is not a folder")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LibraryExportError(f"cannot create {dest}: {exc.strerror or exc}") from exc


def _job_rows(session: Session, *, job: Job, people: dict[uuid.UUID, Person]) -> Iterator[AssetRows]:
    """The job's assets in upload order (which keeps exported names stable between runs), with their rows."""
    asset_ids = list(
        session.scalars(select(Asset.id).where(Asset.job_id == job.id).order_by(Asset.created_at, Asset.id))
    )
    for start in range(0, len(asset_ids), ASSET_CHUNK):
        chunk = asset_ids[start : start + ASSET_CHUNK]
        assets = {a.id: a for a in session.scalars(select(Asset).where(Asset.id.in_(chunk)))}
        results = _by_asset(session.scalars(select(Result).where(Result.asset_id.in_(chunk))))
        tags = _by_asset(session.scalars(select(ResultTag).where(ResultTag.asset_id.in_(chunk))))
        embeddings = _by_asset(session.scalars(select(Embedding).where(Embedding.asset_id.in_(chunk))))
        faces = _by_asset(session.scalars(select(Face).where(Face.asset_id.in_(chunk))))
        for asset_id in chunk:
            yield AssetRows(
                asset=assets[asset_id],
                job=job,
                results=results.get(asset_id, []),
                tags=tags.get(asset_id, []),
                embeddings=embeddings.get(asset_id, []),
                faces=faces.get(asset_id, []),
                people=people,
            )


def _by_asset(rows: Iterable[_R]) -> dict[uuid.UUID, list[_R]]:
    grouped: dict[uuid.UUID, list[_R]] = {}
    for row in rows:
        grouped.setdefault(row.asset_id, []).append(row)
    return grouped


def _export_asset(
    storage: LocalStorage, rows: AssetRows, *, folder: Path, name: str, relative: str, summary: ExportSummary
) -> None:
    asset = rows.asset
    original = folder / name
    sidecar_path = folder / (name + JSON_SIDECAR_SUFFIX)
    file_sha256: str | None = None
    wrote_original = False
    try:
        folder.mkdir(exist_ok=True)
        if asset.storage_key is not None:
            stored = storage.path_for(asset.storage_key)
            if not stored.is_file():
                summary.problems.append(ExportProblem(relative, "the stored file is missing; only its sidecar"))
            else:
                file_sha256 = _stored_sha256(asset.storage_key, stored)
                if not _same_size(original, stored):
                    _copy_original(stored, original, expected_sha256=file_sha256)
                    summary.originals_written += 1
                    wrote_original = True
        document = asset_sidecar(rows, file_sha256=file_sha256).to_document()
        if _existing_document(sidecar_path) == document:
            summary.unchanged += not wrote_original
            return
        _write_atomic(sidecar_path, lambda handle: _dump_json(document, handle))
        summary.sidecars_written += 1
    except (OSError, MediaAnalysisError) as exc:
        reason = exc.message if isinstance(exc, MediaAnalysisError) else (exc.strerror or str(exc))
        summary.problems.append(ExportProblem(relative, reason))


def _stored_sha256(key: str, stored: Path) -> str:
    """The hash of stored bytes: the last part of a content-addressed key, else read from the file."""
    last = key.rsplit("/", 1)[-1]
    if _SHA256_HEX.fullmatch(last):
        return last
    digest = hashlib.sha256()
    with stored.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _same_size(target: Path, stored: Path) -> bool:
    try:
        return not target.is_symlink() and target.is_file() and target.stat().st_size == stored.stat().st_size
    except OSError:
        return False


def _copy_original(stored: Path, target: Path, *, expected_sha256: str) -> None:
    digest = hashlib.sha256()

    def copy(handle: IO[Any]) -> None:
        with stored.open("rb") as source:
            while chunk := source.read(READ_CHUNK_BYTES):
                digest.update(chunk)
                handle.write(chunk)
        if digest.hexdigest() != expected_sha256:
            raise LibraryExportError("the stored bytes do not match their recorded sha256; the store may be damaged")

    _write_atomic(target, copy, binary=True)


def _existing_document(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _dump_json(document: object, handle: IO[Any]) -> None:
    json.dump(document, handle, ensure_ascii=False, indent=1)
    handle.write("\n")


def _write_atomic(target: Path, write: Callable[[IO[Any]], None], *, binary: bool = False) -> None:
    """Write through a hidden temporary file beside ``target``, then rename it into place."""
    temp = target.with_name(f"{TEMP_PREFIX}{secrets.token_hex(8)}.part")
    try:
        with temp.open("xb") if binary else temp.open("x", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
