"""Jobs and assets, always scoped to a tenant (data access, keyword-only)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Job, Result, ResultTag
from orchestrator.enums import AssetStatus, JobStatus
from orchestrator.errors import ConflictError, NotFoundError

KNOWN_ANALYZERS = ("clip", "objects", "faces", "transcribe", "nsfw")


@dataclass(frozen=True)
class JobProgress:
    """Asset counts of a job by status."""

    total: int = 0
    uploaded: int = 0
    prepared: int = 0
    analyzing: int = 0
    done: int = 0
    failed: int = 0


def create_job(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    name: str = "",
    analyzers: list[str] | None = None,
    options: dict[str, Any] | None = None,
    default_analyzers: list[str],
) -> Job:
    """Open a job that accepts files until it is sealed."""
    chosen = list(dict.fromkeys(analyzers or default_analyzers))
    unknown = [a for a in chosen if a not in KNOWN_ANALYZERS]
    if unknown:
        raise ConflictError(
            f"unknown analyzers: {', '.join(unknown)}; known: {', '.join(KNOWN_ANALYZERS)}", code="unknown_analyzer"
        )
    job = Job(tenant_id=tenant_id, name=name[:200], analyzers=chosen, options=options or {})
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, for_update: bool = False) -> Job:
    """The tenant's job; another tenant's job is reported as not found."""
    query = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
    if for_update:
        query = query.with_for_update()
    job = session.scalar(query)
    if job is None:
        raise NotFoundError("job not found")
    return job


def list_jobs(session: Session, *, tenant_id: uuid.UUID, limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
    """The tenant's jobs, newest first, and their total count."""
    count = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)) or 0
    jobs = session.scalars(
        select(Job).where(Job.tenant_id == tenant_id).order_by(Job.created_at.desc()).limit(limit).offset(offset)
    )
    return list(jobs), count


def seal_job(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> tuple[Job, bool]:
    """Close a job to new files. Returns the job and whether this call sealed it (sealing twice is harmless)."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id, for_update=True)
    if job.status != JobStatus.OPEN:
        return job, False
    job.status = JobStatus.QUEUED
    job.sealed_at = utcnow()
    return job, True


def job_progress(session: Session, *, job_id: uuid.UUID) -> JobProgress:
    """Counts of the job's assets by status."""
    rows = session.execute(
        select(Asset.status, func.count()).where(Asset.job_id == job_id).group_by(Asset.status)
    ).all()
    counts = {str(status): int(n) for status, n in rows}
    return JobProgress(
        total=sum(counts.values()),
        uploaded=counts.get(AssetStatus.UPLOADED, 0),
        prepared=counts.get(AssetStatus.PREPARED, 0),
        analyzing=counts.get(AssetStatus.ANALYZING, 0),
        done=counts.get(AssetStatus.DONE, 0),
        failed=counts.get(AssetStatus.FAILED, 0),
    )


def get_asset(session: Session, *, tenant_id: uuid.UUID, asset_id: uuid.UUID) -> Asset:
    """The tenant's asset; another tenant's asset is reported as not found."""
    asset = session.scalar(select(Asset).where(Asset.id == asset_id, Asset.tenant_id == tenant_id))
    if asset is None:
        raise NotFoundError("asset not found")
    return asset


def list_assets(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    status: AssetStatus | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[Asset], int]:
    """The assets of one of the tenant's jobs, in upload order, and their total count."""
    get_job(session, tenant_id=tenant_id, job_id=job_id)
    where = [Asset.job_id == job_id, Asset.tenant_id == tenant_id]
    if status is not None:
        where.append(Asset.status == status)
    count = session.scalar(select(func.count()).select_from(Asset).where(*where)) or 0
    assets = session.scalars(
        select(Asset).where(*where).order_by(Asset.created_at, Asset.id).limit(limit).offset(offset)
    )
    return list(assets), count


def results_for_assets(
    session: Session, *, tenant_id: uuid.UUID, asset_ids: list[uuid.UUID]
) -> tuple[dict[uuid.UUID, dict[str, dict[str, Any]]], dict[uuid.UUID, list[ResultTag]]]:
    """Full payloads by asset and analyzer, and tags by asset (highest score first), for a page of assets."""
    payloads: dict[uuid.UUID, dict[str, dict[str, Any]]] = {a: {} for a in asset_ids}
    tags: dict[uuid.UUID, list[ResultTag]] = {a: [] for a in asset_ids}
    if not asset_ids:
        return payloads, tags
    for result in session.scalars(select(Result).where(Result.tenant_id == tenant_id, Result.asset_id.in_(asset_ids))):
        payloads[result.asset_id][result.analyzer] = {"model_id": result.model_id, **result.payload}
    for tag in session.scalars(
        select(ResultTag)
        .where(ResultTag.tenant_id == tenant_id, ResultTag.asset_id.in_(asset_ids))
        .order_by(ResultTag.score.desc())
    ):
        tags[tag.asset_id].append(tag)
    return payloads, tags


def progress_for_jobs(session: Session, *, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, JobProgress]:
    """Asset counts by status of several jobs at once (one grouped query, for a page of the job list)."""
    counts: dict[uuid.UUID, dict[str, int]] = {job_id: {} for job_id in job_ids}
    if job_ids:
        rows = session.execute(
            select(Asset.job_id, Asset.status, func.count())
            .where(Asset.job_id.in_(job_ids))
            .group_by(Asset.job_id, Asset.status)
        )
        for job_id, status, n in rows:
            counts[job_id][str(status)] = int(n)
    return {
        job_id: JobProgress(
            total=sum(by_status.values()),
            uploaded=by_status.get(AssetStatus.UPLOADED, 0),
            prepared=by_status.get(AssetStatus.PREPARED, 0),
            analyzing=by_status.get(AssetStatus.ANALYZING, 0),
            done=by_status.get(AssetStatus.DONE, 0),
            failed=by_status.get(AssetStatus.FAILED, 0),
        )
        for job_id, by_status in counts.items()
    }
