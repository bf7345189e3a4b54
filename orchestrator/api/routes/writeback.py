"""Write-back: write a job's (or some assets') tags, people and face regions into the original files' XMP, follow it,
list it, undo it; and download a job's current originals as one zip."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from gpu_worker.tagging.keywords import TagMode
from orchestrator.api.deps import SessionDep, StorageDep, TenantDep
from orchestrator.api.error_responses import TENANT_ERRORS, error_responses
from orchestrator.api.paging import Offset
from orchestrator.db.models import Asset, MetadataWrite
from orchestrator.jobs import get_job
from orchestrator.storage import LocalStorage
from orchestrator.tasks.app import enqueue
from orchestrator.tasks.constants import TASK_WRITEBACK
from orchestrator.writeback.archive import ArchiveEntry, stream_zip
from orchestrator.writeback.records import MAX_ASSET_IDS, create_write, get_write, list_writes, write_items
from orchestrator.writeback.undo import delete_unreferenced, undo_write

router = APIRouter(tags=["writeback"], responses=TENANT_ERRORS)
NOT_FOUND = error_responses(404)


class WritebackCreate(BaseModel):
    """Which files to write (a job, or assets), how (append to or replace our earlier keywords), and what."""

    job_id: uuid.UUID | None = None
    asset_ids: list[uuid.UUID] | None = Field(default=None, min_length=1, max_length=MAX_ASSET_IDS)
    mode: Literal["append", "replace"] = "append"
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    faces: bool = Field(default=True, description="write named people as keywords and face regions (MWG)")

    @model_validator(mode="after")
    def _one_scope(self) -> WritebackCreate:
        if (self.job_id is None) == (self.asset_ids is None):
            raise ValueError("give either job_id or asset_ids")
        return self


class WritebackPublic(BaseModel):
    """A write-back: its scope and options, its status, and counts of files by outcome once finished."""

    id: uuid.UUID
    mode: str
    scope: dict[str, Any]
    status: str
    summary: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None
    undone_at: datetime | None


class WritebacksPublic(BaseModel):
    """A page of write-backs and their total count."""

    data: list[WritebackPublic]
    count: int


class WritebackItemPublic(BaseModel):
    """What a write-back did to one file."""

    asset_id: uuid.UUID
    name: str
    status: str
    error: str | None
    previous_size: int | None
    new_size: int | None
    new_sha256: str | None
    written: dict[str, Any]


class WritebackDetailPublic(WritebackPublic):
    """A write-back with each of its files."""

    items: list[WritebackItemPublic]


def writeback_public(write: MetadataWrite) -> WritebackPublic:
    """The public view of a write-back."""
    return WritebackPublic(
        id=write.id,
        mode=write.mode,
        scope=dict(write.scope),
        status=write.status,
        summary=dict(write.summary),
        created_at=write.created_at,
        finished_at=write.finished_at,
        undone_at=write.undone_at,
    )


def writeback_detail(session: Session, write: MetadataWrite) -> WritebackDetailPublic:
    """A write-back with its items."""
    items = [
        WritebackItemPublic(
            asset_id=item.asset_id,
            name=name,
            status=item.status,
            error=item.error,
            previous_size=item.previous_size_bytes,
            new_size=item.new_size_bytes,
            new_sha256=item.new_sha256,
            written=dict(item.written),
        )
        for item, name in write_items(session, write_id=write.id)
    ]
    return WritebackDetailPublic(**writeback_public(write).model_dump(), items=items)


def start_writeback(session: Session, *, tenant_id: uuid.UUID, body: WritebackCreate) -> MetadataWrite:
    """Record a RUNNING write-back, commit it, and send it to the workers."""
    write = create_write(
        session,
        tenant_id=tenant_id,
        job_id=body.job_id,
        asset_ids=body.asset_ids,
        mode=TagMode(body.mode),
        min_score=body.min_score,
        faces=body.faces,
    )
    session.commit()
    enqueue(TASK_WRITEBACK, str(write.id))
    return write


def undo_writeback(
    session: Session, storage: LocalStorage, *, tenant_id: uuid.UUID, write_id: uuid.UUID
) -> MetadataWrite:
    """Undo a write-back, commit, then delete the written copies nothing uses any more."""
    write, released = undo_write(session, tenant_id=tenant_id, write_id=write_id)
    session.commit()
    delete_unreferenced(session, storage, released)
    return write


@router.post("/writeback", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(404, 409))
def post_writeback(body: WritebackCreate, session: SessionDep, tenant: TenantDep) -> WritebackPublic:
    """Start writing tags (and named people and face regions) into the XMP of a finished job's files, or of the
    given assets. Each file gets a new stored copy; the previous one is kept, so the write-back can be undone.
    Poll ``GET /writeback/{id}`` until its status is ``done``."""
    return writeback_public(start_writeback(session, tenant_id=tenant.id, body=body))


@router.get("/writeback")
def get_writebacks(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> WritebacksPublic:
    """The tenant's write-backs, newest first."""
    writes, count = list_writes(session, tenant_id=tenant.id, limit=limit, offset=offset)
    return WritebacksPublic(data=[writeback_public(w) for w in writes], count=count)


@router.get("/writeback/{write_id}", responses=NOT_FOUND)
def get_writeback(write_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> WritebackDetailPublic:
    """A write-back's status and what it did to each file."""
    return writeback_detail(session, get_write(session, tenant_id=tenant.id, write_id=write_id))


@router.post("/writeback/{write_id}/undo", responses=error_responses(404, 409))
def post_undo(write_id: uuid.UUID, session: SessionDep, tenant: TenantDep, storage: StorageDep) -> WritebackPublic:
    """Put back the files a write-back replaced (exactly the previous bytes). Refused while it runs, or when one of
    its files was written again later (undo that write-back first). Undoing twice changes nothing."""
    return writeback_public(undo_writeback(session, storage, tenant_id=tenant.id, write_id=write_id))


def originals_zip(
    session: Session, storage: LocalStorage, *, tenant_id: uuid.UUID, job_id: uuid.UUID
) -> StreamingResponse:
    """A job's current stored files (with any written-back metadata) as a streamed zip."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    rows = session.execute(
        select(Asset.id, Asset.original_name, Asset.storage_key, Asset.size_bytes)
        .where(Asset.job_id == job.id, Asset.tenant_id == tenant_id, Asset.storage_key.is_not(None))
        .order_by(Asset.created_at, Asset.id)
    ).all()
    entries = [
        ArchiveEntry(original_name=name, storage_key=key, size_bytes=size, fallback=asset_id.hex)
        for asset_id, name, key, size in rows
        if key is not None
    ]
    return StreamingResponse(
        stream_zip(storage, entries),
        media_type="application/zip",
        headers={
            "Content-Disposition": f"attachment; filename=job-{job.id}-originals.zip",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )


@router.get("/jobs/{job_id}/originals.zip", response_class=StreamingResponse, responses=NOT_FOUND)
def get_originals_zip(
    job_id: uuid.UUID, session: SessionDep, tenant: TenantDep, storage: StorageDep
) -> StreamingResponse:
    """Every stored file of the job as it is now (with written-back metadata), in one zip, under its uploaded name
    (made safe and unique)."""
    return originals_zip(session, storage, tenant_id=tenant.id, job_id=job_id)
