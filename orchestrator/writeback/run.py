"""Run one write-back: for each asset in its scope, plan from the results, write a verified copy, and point the asset
at it. Each file is its own transaction and fails alone.

Idempotent (the task that calls it is delivered at least once): an asset that already has an item in this
write-back is not tried again, and the write-back is finished only while it is still running. The asset is moved to
the new copy with a conditional UPDATE on its previous key, so a concurrent write-back of the same file cannot be
lost: the later one finds the key changed and fails that file with a message.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gpu_worker.contract import MediaKind
from gpu_worker.tagging.errors import ExifToolError, ExifToolMissingError
from gpu_worker.tagging.exiftool import ExifTool, find_exiftool
from gpu_worker.tagging.keywords import TagMode
from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Face, MetadataWrite, MetadataWriteItem, Person, Result, ResultTag
from orchestrator.enums import AssetStatus
from orchestrator.storage import LocalStorage
from orchestrator.writeback.apply import FileWrite, SourceFile, write_copy
from orchestrator.writeback.plan import AssetPlan, FaceBox, plan_asset, unsupported_reason
from orchestrator.writeback.records import scope_asset_ids
from orchestrator.writeback.states import ItemStatus, WriteFailedError, WriteStatus

log = logging.getLogger(__name__)

SessionFactory = Callable[[], contextlib.AbstractContextManager[Session]]


@dataclass(frozen=True)
class _Work:
    """What one asset's write needs, read in a short transaction before the file work."""

    source: SourceFile
    plan: AssetPlan


def run_write(
    session_scope: SessionFactory,
    storage: LocalStorage,
    *,
    write_id: uuid.UUID,
    max_pixels: int,
    exiftool_path: str | None = None,
) -> WriteStatus | None:
    """Write every asset of a running write-back and finish it; returns its final status (None if it is unknown)."""
    with session_scope() as session:
        write = session.get(MetadataWrite, write_id)
        if write is None:
            return None
        if write.status != WriteStatus.RUNNING:
            return WriteStatus(write.status)
        tenant_id, mode, scope = write.tenant_id, TagMode(write.mode), dict(write.scope)
        asset_ids = scope_asset_ids(session, tenant_id=tenant_id, scope=scope)
        done = set(session.scalars(select(MetadataWriteItem.asset_id).where(MetadataWriteItem.write_id == write_id)))
    try:
        executable = find_exiftool(exiftool_path)
    except ExifToolMissingError as exc:
        return _finish(session_scope, write_id, error=exc.message)
    with ExifTool(executable) as exiftool:
        for asset_id in asset_ids:
            if asset_id in done:
                continue
            _write_one(
                session_scope,
                storage,
                exiftool,
                write_id=write_id,
                tenant_id=tenant_id,
                asset_id=asset_id,
                mode=mode,
                options=scope,
                max_pixels=max_pixels,
            )
    return _finish(session_scope, write_id)


def _write_one(
    session_scope: SessionFactory,
    storage: LocalStorage,
    exiftool: ExifTool,
    *,
    write_id: uuid.UUID,
    tenant_id: uuid.UUID,
    asset_id: uuid.UUID,
    mode: TagMode,
    options: dict[str, Any],
    max_pixels: int,
) -> None:
    with session_scope() as session:
        work = _prepare(session, asset_id=asset_id, mode=mode, options=options)
        if not isinstance(work, _Work):
            _record(session, write_id, asset_id, status=ItemStatus.SKIPPED, error=work)
            return
    try:
        outcome = write_copy(
            exiftool,
            storage,
            source=work.source,
            plan=work.plan,
            mode=mode,
            tenant_id=tenant_id,
            write_id=write_id,
            max_pixels=max_pixels,
        )
    except (WriteFailedError, ExifToolError) as exc:
        with session_scope() as session:
            _record(session, write_id, asset_id, status=ItemStatus.FAILED, error=exc.message)
        return
    except OSError as exc:
        log.warning("write-back %s: asset %s: %s", write_id, asset_id, exc)
        with session_scope() as session:
            _record(session, write_id, asset_id, status=ItemStatus.FAILED, error="the stored file could not be read")
        return
    with session_scope() as session:
        _commit(session, storage, write_id=write_id, asset_id=asset_id, previous_key=work.source.key, outcome=outcome)


def _prepare(session: Session, *, asset_id: uuid.UUID, mode: TagMode, options: dict[str, Any]) -> _Work | str:
    """The asset's source file and plan, or why it is skipped."""
    asset = session.get(Asset, asset_id)
    if asset is None or asset.storage_key is None:
        return "the file has no stored bytes (it was rejected at upload)"
    if asset.status != AssetStatus.DONE:
        return f"the file is not analyzed ({asset.status})"
    reason = unsupported_reason(asset.mime_type)
    if reason is not None:
        return reason
    assert asset.mime_type is not None and asset.media_kind is not None
    tags = [(t.tag, t.score) for t in session.scalars(select(ResultTag).where(ResultTag.asset_id == asset_id))]
    rows = session.execute(
        select(Face, Person.name).outerjoin(Person, Person.id == Face.person_id).where(Face.asset_id == asset_id)
    ).all()
    people = [name for _, name in sorted(rows, key=lambda row: row[0].face_index) if name]
    faces: list[FaceBox] | None = None
    if options.get("faces", True):
        if rows:
            faces = [_face_box(face.box, name) for face, name in rows if face.timestamp_s is None]
        else:
            faces = _payload_faces(session, asset_id)
    else:
        people = []
    plan = plan_asset(
        tags=tags,
        people=people,
        faces=faces,
        mime=asset.mime_type,
        width=asset.width,
        height=asset.height,
        min_score=float(options.get("min_score", 0.0)),
    )
    if plan.empty and mode is TagMode.APPEND:
        return "nothing to write: no tag reaches the score threshold and no face was found"
    source = SourceFile(
        key=asset.storage_key,
        mime=asset.mime_type,
        kind=MediaKind(asset.media_kind),
        width=asset.width,
        height=asset.height,
    )
    return _Work(source=source, plan=plan)


def _face_box(box: list[float], name: str | None) -> FaceBox:
    values = [float(v) for v in box[:4]] + [0.0] * max(0, 4 - len(box))
    return FaceBox((values[0], values[1], values[2], values[3]), name)


def _payload_faces(session: Session, asset_id: uuid.UUID) -> list[FaceBox] | None:
    """Faces straight from the faces result (normalized boxes, no names) when no face rows were indexed; None when
    faces were never analyzed, so the file's own regions are left alone."""
    result = session.scalar(select(Result).where(Result.asset_id == asset_id, Result.analyzer == "faces"))
    if result is None:
        return None
    faces = result.payload.get("faces", [])
    return [
        _face_box(face["box"], None)
        for face in faces
        if isinstance(face, dict) and isinstance(face.get("box"), list) and face.get("timestamp_s") is None
    ]


def _commit(
    session: Session,
    storage: LocalStorage,
    *,
    write_id: uuid.UUID,
    asset_id: uuid.UUID,
    previous_key: str,
    outcome: FileWrite,
) -> None:
    if outcome.status is not ItemStatus.WRITTEN:
        _record(session, write_id, asset_id, status=outcome.status, written=outcome.written)
        return
    asset = session.get(Asset, asset_id)
    previous_size = asset.size_bytes if asset is not None else None
    moved = session.execute(
        update(Asset)
        .where(Asset.id == asset_id, Asset.storage_key == previous_key)
        .values(storage_key=outcome.key, size_bytes=outcome.size_bytes, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        _record(session, write_id, asset_id, status=ItemStatus.FAILED, error="the file changed while it was written")
        # Only this write-back's other files (identical bytes) can share the copy's key.
        if outcome.key is not None and session.scalar(select(Asset.id).where(Asset.storage_key == outcome.key)) is None:
            storage.delete(outcome.key)
        return
    session.add(
        MetadataWriteItem(
            write_id=write_id,
            asset_id=asset_id,
            status=ItemStatus.WRITTEN,
            previous_storage_key=previous_key,
            previous_size_bytes=previous_size,
            new_storage_key=outcome.key,
            new_size_bytes=outcome.size_bytes,
            new_sha256=outcome.sha256,
            written=outcome.written,
        )
    )


def _record(
    session: Session,
    write_id: uuid.UUID,
    asset_id: uuid.UUID,
    *,
    status: ItemStatus,
    error: str | None = None,
    written: dict[str, Any] | None = None,
) -> None:
    session.add(
        MetadataWriteItem(write_id=write_id, asset_id=asset_id, status=status, error=error, written=written or {})
    )


def _finish(session_scope: SessionFactory, write_id: uuid.UUID, *, error: str | None = None) -> WriteStatus | None:
    with session_scope() as session:
        write = session.scalar(select(MetadataWrite).where(MetadataWrite.id == write_id).with_for_update())
        if write is None:
            return None
        if write.status != WriteStatus.RUNNING:
            return WriteStatus(write.status)
        counts = Counter(
            session.scalars(select(MetadataWriteItem.status).where(MetadataWriteItem.write_id == write_id))
        )
        write.summary = {**{str(s): counts.get(str(s), 0) for s in ItemStatus if s is not ItemStatus.UNDONE}}
        if error is not None:
            write.summary = {**write.summary, "error": error}
        write.status = WriteStatus.FAILED if error is not None else WriteStatus.DONE
        write.finished_at = utcnow()
        return WriteStatus(write.status)
