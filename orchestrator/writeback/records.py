"""Creating, finding and listing a tenant's write-backs; every lookup is scoped to the tenant (another tenant's
write-back, job or asset is not found)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpu_worker.tagging.keywords import TagMode
from orchestrator.db.models import Asset, MetadataWrite, MetadataWriteItem
from orchestrator.enums import JobStatus
from orchestrator.errors import NotFoundError
from orchestrator.jobs import get_job
from orchestrator.writeback.states import WritebackScopeError, WriteStatus

MAX_ASSET_IDS = 10_000
FINISHED_JOB_STATES = frozenset({JobStatus.DONE, JobStatus.CANCELLED})
# Write-backs of one job are found among the tenant's most recent ones.
JOB_WRITES_SCANNED = 500


def create_write(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | None,
    asset_ids: Sequence[uuid.UUID] | None,
    mode: TagMode,
    min_score: float,
    faces: bool,
) -> MetadataWrite:
    """A RUNNING write-back of a finished job's files, or of the given assets; the caller commits and enqueues it."""
    scope: dict[str, Any]
    if job_id is not None:
        job = get_job(session, tenant_id=tenant_id, job_id=job_id)
        if job.status not in FINISHED_JOB_STATES:
            raise WritebackScopeError(f"the job is {job.status}; write its tags into the files once it is done")
        scope = {"job_id": str(job.id)}
    else:
        wanted = list(dict.fromkeys(asset_ids or []))
        found = set(session.scalars(select(Asset.id).where(Asset.id.in_(wanted), Asset.tenant_id == tenant_id)))
        if not wanted or len(found) != len(wanted):
            raise NotFoundError("asset not found")
        scope = {"asset_ids": [str(a) for a in wanted]}
    write = MetadataWrite(
        tenant_id=tenant_id,
        mode=str(mode),
        scope={**scope, "min_score": min_score, "faces": faces},
        status=WriteStatus.RUNNING,
        summary={},
    )
    session.add(write)
    session.flush()
    return write


def scope_asset_ids(session: Session, *, tenant_id: uuid.UUID, scope: dict[str, Any]) -> list[uuid.UUID]:
    """The tenant's assets a write-back covers, in upload order."""
    query = select(Asset.id).where(Asset.tenant_id == tenant_id)
    if "job_id" in scope:
        query = query.where(Asset.job_id == uuid.UUID(scope["job_id"]))
    else:
        query = query.where(Asset.id.in_([uuid.UUID(a) for a in scope.get("asset_ids", [])]))
    return list(session.scalars(query.order_by(Asset.created_at, Asset.id)))


def get_write(
    session: Session, *, tenant_id: uuid.UUID, write_id: uuid.UUID, for_update: bool = False
) -> MetadataWrite:
    """The tenant's write-back; another tenant's is reported as not found."""
    query = select(MetadataWrite).where(MetadataWrite.id == write_id, MetadataWrite.tenant_id == tenant_id)
    write = session.scalar(query.with_for_update() if for_update else query)
    if write is None:
        raise NotFoundError("write-back not found")
    return write


def list_writes(
    session: Session, *, tenant_id: uuid.UUID, limit: int = 50, offset: int = 0
) -> tuple[list[MetadataWrite], int]:
    """The tenant's write-backs, newest first, and their total count."""
    where = MetadataWrite.tenant_id == tenant_id
    count = session.scalar(select(func.count()).select_from(MetadataWrite).where(where)) or 0
    writes = session.scalars(
        select(MetadataWrite).where(where).order_by(MetadataWrite.created_at.desc()).limit(limit).offset(offset)
    )
    return list(writes), count


def writes_of_job(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> list[MetadataWrite]:
    """The write-backs of one job, newest first (among the tenant's recent ones)."""
    writes, _ = list_writes(session, tenant_id=tenant_id, limit=JOB_WRITES_SCANNED)
    return [w for w in writes if w.scope.get("job_id") == str(job_id)]


def write_items(session: Session, *, write_id: uuid.UUID) -> list[tuple[MetadataWriteItem, str]]:
    """Each file of a write-back with the name it was uploaded under, in the order they were written."""
    rows = session.execute(
        select(MetadataWriteItem, Asset.original_name)
        .join(Asset, Asset.id == MetadataWriteItem.asset_id)
        .where(MetadataWriteItem.write_id == write_id)
        .order_by(MetadataWriteItem.id)
    ).all()
    return [(item, name) for item, name in rows]
