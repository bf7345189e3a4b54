"""The tasks that move a job along: prepare assets, plan batches, analyze a batch, finalize, reap.

Delivery is at-least-once; every task is idempotent. The database row is the truth and decides whether a task has
anything left to do; a duplicate or late message finds nothing and returns.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from celery import shared_task
from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from gpu_worker.contract import BatchManifest, ManifestItem, MediaKind
from orchestrator.backends.router import backends_for_batch
from orchestrator.batching import (
    Claim,
    batches_to_requeue,
    claim_batch,
    claim_holds,
    complete_batch,
    fail_exhausted_batches,
    finalize_job,
    plan_batches,
    release_batch,
    renew_lease,
)
from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Batch, Job
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, BatchStatus, JobStatus
from orchestrator.errors import BackendUnavailableError
from orchestrator.ingest import prepare_asset as prepare_asset_row
from orchestrator.settings import get_settings
from orchestrator.storage import LocalStorage, blob_key
from orchestrator.tasks.constants import (
    BACKEND_RETRY_S,
    PLAN_RETRY_S,
    TASK_ANALYZE_BATCH,
    TASK_FINALIZE_JOB,
    TASK_PLAN_JOB,
    TASK_PREPARE_ASSET,
    TASK_REAP,
)

log = logging.getLogger(__name__)


def _storage() -> LocalStorage:
    return LocalStorage(get_settings().media_dir)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@shared_task(name=TASK_PREPARE_ASSET)
def prepare_asset(asset_id: str) -> bool:
    """Probe and thumbnail one uploaded asset; a corrupt file fails alone with its reason."""
    settings = get_settings()
    with session_scope() as session:
        return prepare_asset_row(
            session, storage=_storage(), asset_id=uuid.UUID(asset_id), max_image_pixels=settings.max_image_pixels
        )


@shared_task(name=TASK_PLAN_JOB)
def plan_job(job_id: str) -> int:
    """Group a sealed job's prepared assets into batches and enqueue them; re-plans later while uploads prepare."""
    settings = get_settings()
    with session_scope() as session:
        batch_ids = plan_batches(
            session, job_id=uuid.UUID(job_id), batch_size=settings.batch_size, max_attempts=settings.batch_max_attempts
        )
    if batch_ids is None:
        plan_job.apply_async(args=[job_id], countdown=PLAN_RETRY_S)
        return 0
    for batch_id in batch_ids:
        analyze_batch.delay(str(batch_id))
    finalize_job_task.delay(job_id)
    return len(batch_ids)


def build_manifest(batch_id: uuid.UUID) -> tuple[BatchManifest, uuid.UUID]:
    """The manifest of a batch, and the batch's job id.

    Items carry local paths, which only the in-process backend reads; a backend on another process or machine
    replaces them with signed media URLs itself (see ``WorkerClient.remote_manifest``), so that no path and no
    credential leaves this machine.
    """
    storage = _storage()
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise LookupError(f"batch {batch_id} vanished")
        job = session.get(Job, batch.job_id)
        options = dict(job.options) if job else {}
        assets = session.scalars(
            select(Asset).where(Asset.batch_id == batch_id, Asset.status == AssetStatus.ANALYZING).order_by(Asset.id)
        )
        items = [
            ManifestItem(
                asset_id=str(a.id),
                media_kind=MediaKind(a.media_kind or MediaKind.IMAGE),
                path=str(storage.path_for(a.storage_key)) if a.storage_key else None,
                # After a write-back the stored file is a copy with new metadata, no longer the upload's bytes.
                sha256=a.sha256 if a.sha256 and a.storage_key == blob_key(a.tenant_id, a.sha256) else None,
            )
            for a in assets
        ]
        return BatchManifest(batch_id=str(batch_id), analyzers=list(batch.analyzers), options=options, items=items), (
            batch.job_id
        )


@contextmanager
def _lease_heartbeat(claim: Claim, lease_s: float) -> Iterator[threading.Event]:
    """Renew the batch lease every third of its length while the body runs; sets the event if the claim is lost."""
    stop, lost = threading.Event(), threading.Event()

    def beat() -> None:
        while not stop.wait(lease_s / 3):
            with session_scope() as session:
                if not renew_lease(session, claim=claim, lease_s=lease_s):
                    lost.set()
                    return

    thread = threading.Thread(target=beat, name=f"lease-{claim.batch_id}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(timeout=5)


@shared_task(name=TASK_ANALYZE_BATCH)
def analyze_batch(batch_id: str) -> str:
    """Claim a batch, run it on the first backend that works, and write its results under the claim.

    The backends come in the batch's tenant's tier order (:func:`~orchestrator.backends.router.backends_for_batch`).
    When none may run it now (waiting for a GPU), the batch stays queued unclaimed, spending no attempt, and the
    reaper sends it again. A backend that fails passes the batch to the next one; when all fail, it goes back to
    the queue. The claim fences results: a batch is written once, whichever backend or delivery finishes it.
    """
    settings = get_settings()
    with session_scope() as session:
        batch = session.get(Batch, uuid.UUID(batch_id))
        if batch is None or batch.status not in (BatchStatus.PENDING, BatchStatus.RUNNING):
            return "nothing to claim"
        backends, plan = backends_for_batch(
            session, tenant_id=batch.tenant_id, queued_at=batch.created_at, now=utcnow(), settings=settings
        )
        if not backends:
            session.execute(
                update(Batch)
                .where(Batch.id == batch.id, Batch.status == BatchStatus.PENDING)
                .values(last_error=plan.waiting_reason)
            )
            return f"waiting: {plan.waiting_reason}"
    with session_scope() as session:
        claim = claim_batch(
            session, batch_id=uuid.UUID(batch_id), worker_id=_worker_id(), lease_s=settings.batch_lease_s
        )
    if claim is None:
        return "nothing to claim"
    manifest, job_id = build_manifest(claim.batch_id)
    failures: list[str] = []
    with _lease_heartbeat(claim, settings.batch_lease_s):
        for backend in backends:
            if failures:
                with session_scope() as session:
                    if not claim_holds(session, claim=claim):
                        return "claim lost"  # released and re-queued meanwhile: running it here would be wasted
            try:
                result = backend.execute(manifest)
            except BackendUnavailableError as exc:
                failures.append(f"{backend.kind}: {exc}")
                continue
            except Exception as exc:  # a crash inside a backend must not strand the batch
                log.exception("backend %s crashed on batch %s", backend.kind, batch_id)
                failures.append(f"{backend.kind}: {type(exc).__name__}: {exc}")
                continue
            with session_scope() as session:
                written = complete_batch(session, claim=claim, result=result, backend=str(backend.kind))
                if written and result.unavailable:
                    _record_notices(session, job_id=job_id, notices=result.unavailable)
            finalize_job_task.delay(str(job_id))
            return "done" if written else "claim lost"
    with session_scope() as session:
        status = release_batch(session, claim=claim, error="; ".join(failures) or "no backend available")
    if status == BatchStatus.PENDING:
        analyze_batch.apply_async(args=[batch_id], countdown=BACKEND_RETRY_S)
    else:
        finalize_job_task.delay(str(job_id))
    return f"released: {status}"


def _record_notices(session: Session, *, job_id: uuid.UUID, notices: dict[str, str]) -> None:
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is not None:
        job.notices = {**job.notices, **notices}


@shared_task(name=TASK_FINALIZE_JOB)
def finalize_job_task(job_id: str) -> bool:
    """Mark the job done when all of its assets are done or failed."""
    with session_scope() as session:
        return finalize_job(session, job_id=uuid.UUID(job_id))


@shared_task(name=TASK_REAP)
def reap() -> dict[str, int]:
    """Find work whose message was lost or whose worker died, and send it again.

    Running batches whose lease expired and stale pending batches get a new analyze message (the claim decides
    who runs them); uploaded assets that were never prepared, and sealed jobs that were never planned or finalized,
    get theirs again.
    """
    settings = get_settings()
    now = utcnow()
    grace = timedelta(seconds=settings.batch_lease_s)
    with session_scope() as session:
        failed = fail_exhausted_batches(session, now=now)
        batches = batches_to_requeue(session, now=now, pending_grace_s=settings.batch_lease_s)
        unprepared = list(
            session.scalars(
                select(Asset.id)
                .join(Job, Job.id == Asset.job_id)
                .where(
                    Asset.status == AssetStatus.UPLOADED,
                    Asset.updated_at < now - grace,
                    # A retry sends failed files of a running job back to UPLOADED too.
                    Job.status.in_([JobStatus.OPEN, JobStatus.QUEUED, JobStatus.RUNNING]),
                )
            )
        )
        if unprepared:
            # The next re-send waits another grace: while the ingest queue is backed up, a re-send every reaper pass
            # would pile duplicate prepare messages behind the ones still waiting.
            session.execute(
                update(Asset)
                .where(Asset.id.in_(unprepared), Asset.status == AssetStatus.UPLOADED)
                .values(updated_at=now)
                .execution_options(synchronize_session=False)
            )
        active_jobs = list(
            session.scalars(
                select(Job.id).where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]), Job.sealed_at < now - grace)
            )
        )
        unplanned = set(
            session.scalars(
                select(Asset.job_id)
                .where(
                    Asset.job_id.in_(active_jobs),
                    and_(Asset.status == AssetStatus.PREPARED, Asset.batch_id.is_(None)),
                )
                .group_by(Asset.job_id)
                .having(func.count() > 0)
            )
        )
    for batch_id in batches:
        analyze_batch.delay(str(batch_id))
    for asset_id in unprepared:
        prepare_asset.delay(str(asset_id))
    for job_id in active_jobs:
        (plan_job if job_id in unplanned else finalize_job_task).delay(str(job_id))
    if batches or failed:
        log.warning("reaper: requeued %d batches, failed %d exhausted batches", len(batches), len(failed))
    return {"requeued": len(batches), "failed": len(failed), "prepared": len(unprepared), "jobs": len(active_jobs)}
