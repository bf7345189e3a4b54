"""Cancelling a job and retrying its failed files (data access, keyword-only, tenant-scoped).

Cancel is a database change only; the tasks observe it. Pending and running batches become FAILED, which takes them
out of the scheduler's pending work and out of the reaper's sight, and fences the worker of a running batch: its
claim no longer holds, so its late answer writes nothing (:func:`orchestrator.batching.complete_batch`). The job's
unfinished files fail with the code ``cancelled``, so a late prepare or finalize message finds nothing to do.

Retry puts a job's failed files that still have their bytes back to work: a file that failed during analysis goes
back to PREPARED without a batch (the next plan gives it a new one); a file that failed before it was prepared goes
back to UPLOADED (it is probed again). A file rejected at upload has no stored bytes and cannot be retried.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Batch, Job
from orchestrator.enums import AssetStatus, BatchStatus, JobStatus
from orchestrator.errors import ConflictError
from orchestrator.jobs import get_job

CANCELLED_CODE = "cancelled"
CANCELLED_ASSET_MESSAGE = "the job was cancelled before this file was analyzed"
CANCELLED_BATCH_MESSAGE = "cancelled by the user"
NOT_RETRYABLE_MESSAGE = "rejected at upload, so its bytes were never stored: upload the file again in a new job"
UNFINISHED_ASSETS = (AssetStatus.UPLOADED, AssetStatus.PREPARED, AssetStatus.ANALYZING)


@dataclass(frozen=True)
class CancelOutcome:
    """What a cancel did: whether this call cancelled the job, and how many batches and files it stopped."""

    job: Job
    cancelled_now: bool
    stopped_batches: int = 0
    cancelled_assets: int = 0


@dataclass(frozen=True)
class NotRetryable:
    """A failed file that retry cannot put back to work, and why."""

    asset_id: uuid.UUID
    name: str
    code: str | None
    reason: str


@dataclass(frozen=True)
class RetryOutcome:
    """What a retry did. The caller commits, then sends ``to_prepare`` to the prepare task and, when ``plan`` is
    true, the job to the plan task."""

    job: Job
    retried: int
    to_prepare: list[uuid.UUID] = field(default_factory=list)
    plan: bool = False
    not_retryable: list[NotRetryable] = field(default_factory=list)


def cancel_job(
    session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, now: datetime | None = None
) -> CancelOutcome:
    """Cancel one of the tenant's jobs: no batch of it runs again and its unfinished files fail as ``cancelled``.

    Cancelling a cancelled job changes nothing; a job that is already done cannot be cancelled (ConflictError
    ``job_finished``). The files that were already analyzed keep their results.
    """
    now = now or utcnow()
    job = get_job(session, tenant_id=tenant_id, job_id=job_id, for_update=True)
    if job.status == JobStatus.CANCELLED:
        return CancelOutcome(job=job, cancelled_now=False)
    if job.status == JobStatus.DONE:
        raise ConflictError("the job is already done; there is nothing left to cancel", code="job_finished")
    stopped = session.execute(
        update(Batch)
        .where(Batch.job_id == job.id, Batch.status.in_([BatchStatus.PENDING, BatchStatus.RUNNING]))
        .values(
            status=BatchStatus.FAILED,
            last_error=CANCELLED_BATCH_MESSAGE,
            finished_at=now,
            claimed_by=None,
            lease_expires_at=None,
            instance_id=None,
        )
        .execution_options(synchronize_session=False)
    )
    cancelled = session.execute(
        update(Asset)
        .where(Asset.job_id == job.id, Asset.status.in_(UNFINISHED_ASSETS))
        .values(status=AssetStatus.FAILED, error_code=CANCELLED_CODE, error_message=CANCELLED_ASSET_MESSAGE)
        .execution_options(synchronize_session=False)
    )
    job.status = JobStatus.CANCELLED
    job.finished_at = now
    session.flush()
    return CancelOutcome(
        job=job,
        cancelled_now=True,
        stopped_batches=int(stopped.rowcount),  # type: ignore[attr-defined]
        cancelled_assets=int(cancelled.rowcount),  # type: ignore[attr-defined]
    )


def retry_failed(
    session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, now: datetime | None = None
) -> RetryOutcome:
    """Put the job's failed files that have stored bytes back to work, and report those that cannot be retried.

    A done or cancelled job with files to retry is queued again (and finished again once they are). An open job
    stays open: its files are planned when it is sealed. Retrying when nothing failed changes nothing.
    """
    now = now or utcnow()
    job = get_job(session, tenant_id=tenant_id, job_id=job_id, for_update=True)
    failed = list(
        session.scalars(
            select(Asset)
            .where(Asset.job_id == job.id, Asset.tenant_id == tenant_id, Asset.status == AssetStatus.FAILED)
            .order_by(Asset.created_at, Asset.id)
        )
    )
    not_retryable = [
        NotRetryable(asset_id=a.id, name=a.original_name, code=a.error_code, reason=NOT_RETRYABLE_MESSAGE)
        for a in failed
        if a.storage_key is None
    ]
    retryable = [a for a in failed if a.storage_key is not None]
    to_prepare: list[uuid.UUID] = []
    for asset in retryable:
        asset.error_code = None
        asset.error_message = None
        if asset.batch_id is not None:
            # It was prepared once (only prepared files are batched): it needs only a new batch.
            asset.status = AssetStatus.PREPARED
            asset.batch_id = None
        else:
            asset.status = AssetStatus.UPLOADED
            to_prepare.append(asset.id)
    plan = False
    if retryable and job.status != JobStatus.OPEN:
        if job.status in (JobStatus.DONE, JobStatus.CANCELLED):
            job.status = JobStatus.QUEUED
            job.finished_at = None
            job.sealed_at = job.sealed_at or now
        plan = True
    session.flush()
    return RetryOutcome(job=job, retried=len(retryable), to_prepare=to_prepare, plan=plan, not_retryable=not_retryable)
