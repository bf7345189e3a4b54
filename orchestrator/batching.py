"""Batches: planning a job's prepared assets into batches, claiming them under a lease, and writing results.

Delivery of the analyze message is at-least-once. Exactly-once *effects* come from here: a batch is claimed with a
conditional UPDATE (a duplicate delivery finds nothing to claim), every write of a worker is fenced by the attempt
number it claimed with (a worker whose lease expired and was taken over writes nothing), and results are upserts.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from gpu_worker.contract import BatchResult, ItemResult
from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Batch, Embedding, Job, Result, ResultTag
from orchestrator.enums import AssetStatus, BatchStatus, JobStatus
from orchestrator.indexing import index_assets, on_job_finished

T = TypeVar("T")
MAX_TAG_CHARS = 200  # the width of result_tags.tag


def chunk(items: Sequence[T], size: int) -> list[list[T]]:
    """Split ``items`` into consecutive lists of at most ``size``."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@dataclass(frozen=True)
class Claim:
    """Proof that this worker holds a batch: the fencing token for every later write."""

    batch_id: uuid.UUID
    worker_id: str
    attempt: int


def plan_batches(session: Session, *, job_id: uuid.UUID, batch_size: int, max_attempts: int) -> list[uuid.UUID] | None:
    """Group the job's prepared, unbatched assets into new pending batches.

    Returns the new batch ids, or None while some assets are still being prepared (plan again later). Idempotent:
    an asset is put in a batch once.
    """
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        return []
    waiting = session.scalar(
        select(func.count()).select_from(Asset).where(Asset.job_id == job_id, Asset.status == AssetStatus.UPLOADED)
    )
    if waiting:
        return None
    reuse_previous_results(session, job=job)
    ready = list(
        session.scalars(
            select(Asset.id)
            .where(Asset.job_id == job_id, Asset.status == AssetStatus.PREPARED, Asset.batch_id.is_(None))
            .order_by(Asset.media_kind, Asset.created_at, Asset.id)
        )
    )
    batch_ids: list[uuid.UUID] = []
    for group in chunk(ready, batch_size):
        batch = Batch(tenant_id=job.tenant_id, job_id=job.id, analyzers=list(job.analyzers), max_attempts=max_attempts)
        session.add(batch)
        session.flush()
        session.execute(
            update(Asset).where(Asset.id.in_(group)).values(batch_id=batch.id, status=AssetStatus.ANALYZING)
        )
        batch_ids.append(batch.id)
    job.status = JobStatus.RUNNING
    return batch_ids


def reuse_previous_results(session: Session, *, job: Job) -> int:
    """Copy results to the job's prepared assets whose identical bytes this tenant already had analyzed with the
    same analyzers and options, so they are not analyzed (and paid for) again. Returns how many were reused.

    Only a complete earlier analysis is reused: one with a result for every analyzer of the job. An analysis that
    lacked an analyzer (its weights were missing, say) is done again.
    """
    pending = list(
        session.scalars(
            select(Asset).where(
                Asset.job_id == job.id,
                Asset.status == AssetStatus.PREPARED,
                Asset.batch_id.is_(None),
                Asset.sha256.is_not(None),
            )
        )
    )
    reused_ids: list[uuid.UUID] = []
    for asset in pending:
        sources = session.execute(
            select(Asset, Job)
            .join(Job, Job.id == Asset.job_id)
            .where(
                Asset.tenant_id == job.tenant_id,
                Asset.sha256 == asset.sha256,
                Asset.status == AssetStatus.DONE,
                Asset.id != asset.id,
            )
            .order_by(Asset.updated_at.desc())
        ).all()
        for source, source_job in sources:
            if source_job.analyzers != job.analyzers or source_job.options != job.options:
                continue
            results = list(session.scalars(select(Result).where(Result.asset_id == source.id)))
            if {r.analyzer for r in results} != set(job.analyzers):
                continue
            _copy_results(session, source=source, target=asset, results=results)
            reused_ids.append(asset.id)
            break
    if reused_ids:
        session.flush()
        index_assets(session, tenant_id=job.tenant_id, asset_ids=reused_ids)
    return len(reused_ids)


def _copy_results(session: Session, *, source: Asset, target: Asset, results: list[Result]) -> None:
    for result in results:
        session.add(
            Result(
                tenant_id=target.tenant_id,
                asset_id=target.id,
                analyzer=result.analyzer,
                model_id=result.model_id,
                payload={**result.payload, "reused_from": str(source.id)},
                batch_attempt=0,
            )
        )
    for tag in session.scalars(select(ResultTag).where(ResultTag.asset_id == source.id)):
        session.add(
            ResultTag(
                tenant_id=target.tenant_id, asset_id=target.id, analyzer=tag.analyzer, tag=tag.tag, score=tag.score
            )
        )
    for embedding in session.scalars(select(Embedding).where(Embedding.asset_id == source.id)):
        session.add(
            Embedding(
                tenant_id=target.tenant_id,
                asset_id=target.id,
                analyzer=embedding.analyzer,
                model_id=embedding.model_id,
                dim=embedding.dim,
                vector=embedding.vector,
            )
        )
    target.width, target.height, target.duration_s = source.width, source.height, source.duration_s
    target.status = AssetStatus.DONE


def claim_batch(session: Session, *, batch_id: uuid.UUID, worker_id: str, lease_s: float) -> Claim | None:
    """Take a pending batch, or a running one whose lease has expired. None when there is nothing to claim."""
    now = utcnow()
    claimable = or_(
        Batch.status == BatchStatus.PENDING,
        and_(Batch.status == BatchStatus.RUNNING, Batch.lease_expires_at < now),
    )
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, claimable, Batch.attempts < Batch.max_attempts)
        .values(
            status=BatchStatus.RUNNING,
            claimed_by=worker_id,
            attempts=Batch.attempts + 1,
            lease_expires_at=now + timedelta(seconds=lease_s),
            started_at=now,
            instance_id=None,  # a new claim runs nowhere yet; a dead holder's instance link must not follow it
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    attempt = session.scalar(select(Batch.attempts).where(Batch.id == batch_id))
    return Claim(batch_id=batch_id, worker_id=worker_id, attempt=int(attempt or 0))


def _held(claim: Claim) -> list[ColumnElement[bool]]:
    return [
        Batch.id == claim.batch_id,
        Batch.status == BatchStatus.RUNNING,
        Batch.claimed_by == claim.worker_id,
        Batch.attempts == claim.attempt,
    ]


def claim_holds(session: Session, *, claim: Claim) -> bool:
    """Whether this worker still holds the batch (it may have been released after its backend died)."""
    return session.scalar(select(Batch.id).where(*_held(claim))) is not None


def renew_lease(session: Session, *, claim: Claim, lease_s: float) -> bool:
    """Extend the lease of a batch this worker still holds. False means the claim was lost."""
    result = session.execute(
        update(Batch).where(*_held(claim)).values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release_batch(session: Session, *, claim: Claim, error: str) -> BatchStatus | None:
    """Give a held batch back after a backend failure: PENDING for another try, FAILED once attempts run out."""
    batch = session.scalar(select(Batch).where(*_held(claim)).with_for_update())
    if batch is None:
        return None
    batch.last_error = error[:2000]
    batch.claimed_by = None
    batch.lease_expires_at = None
    batch.instance_id = None
    if batch.attempts >= batch.max_attempts:
        _fail_batch(
            session, batch, now=utcnow(), message=f"analysis failed after {batch.attempts} attempts: {error[:500]}"
        )
    else:
        batch.status = BatchStatus.PENDING
    return BatchStatus(batch.status)


def complete_batch(session: Session, *, claim: Claim, result: BatchResult, backend: str) -> bool:
    """Write a batch's results and mark it done, in the caller's transaction, only if the claim still holds.

    Results and their tags and embeddings are replaced per (asset, analyzer), so writing the same batch twice
    leaves the same rows. Returns False (and writes nothing) when the claim was lost.
    """
    batch = session.scalar(select(Batch).where(*_held(claim)).with_for_update())
    if batch is None:
        return False
    assets = {a.id: a for a in session.scalars(select(Asset).where(Asset.batch_id == batch.id))}
    by_asset: dict[uuid.UUID, ItemResult] = {}
    for item in result.items:
        try:
            asset_id = uuid.UUID(item.asset_id)
        except ValueError:
            continue  # an answer about an asset that is not in this batch is ignored, never trusted
        if asset_id in assets:
            by_asset[asset_id] = item
    to_write = {
        asset_id: by_asset[asset_id]
        for asset_id, asset in assets.items()
        if asset.status == AssetStatus.ANALYZING and asset_id in by_asset
    }
    existing = _replace_outputs(session, items=to_write)
    rows = _NewRows()
    for asset_id, asset in assets.items():
        if asset.status != AssetStatus.ANALYZING:
            continue
        found = to_write.get(asset_id)
        if found is None:
            asset.status = AssetStatus.FAILED
            asset.error_code, asset.error_message = "missing_result", "the backend returned no result for this file"
            continue
        _write_item(asset=asset, item=found, attempt=claim.attempt, existing=existing, rows=rows)
    rows.insert(session)
    session.flush()
    index_assets(session, tenant_id=batch.tenant_id, asset_ids=list(assets))
    batch.status = BatchStatus.DONE
    batch.backend = backend
    batch.finished_at = utcnow()
    batch.lease_expires_at = None
    return True


def _replace_outputs(session: Session, *, items: dict[uuid.UUID, ItemResult]) -> dict[tuple[uuid.UUID, str], Result]:
    """Before a batch's outputs are written: drop the tags and embeddings they replace, and return the results they
    replace by (asset, analyzer). One read and two deletes per analyzer for the whole batch, not per item: every
    statement autoflushes, and per item that was most of a batch's dispatch time."""
    by_analyzer: dict[str, list[uuid.UUID]] = {}
    for asset_id, item in items.items():
        for analyzer in item.outputs:
            by_analyzer.setdefault(analyzer, []).append(asset_id)
    if not by_analyzer:
        return {}
    existing = {
        (r.asset_id, r.analyzer): r for r in session.scalars(select(Result).where(Result.asset_id.in_(list(items))))
    }
    for analyzer, asset_ids in by_analyzer.items():
        session.execute(delete(ResultTag).where(ResultTag.asset_id.in_(asset_ids), ResultTag.analyzer == analyzer))
        session.execute(delete(Embedding).where(Embedding.asset_id.in_(asset_ids), Embedding.analyzer == analyzer))
    return existing


@dataclass
class _NewRows:
    """The rows a batch's results add, inserted with one executemany statement per table: building an ORM object per
    tag and embedding cost more than the database did."""

    results: list[dict[str, Any]] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)
    embeddings: list[dict[str, Any]] = field(default_factory=list)

    def insert(self, session: Session) -> None:
        """Insert the collected rows in the caller's transaction: on PostgreSQL tags and embeddings with COPY, as
        row-by-row INSERTs cost more than the database did; elsewhere (SQLite, in-process) as executemany."""
        if self.results:
            session.execute(insert(Result), self.results)
        if session.get_bind().dialect.name == "postgresql":
            _copy_rows(session, ResultTag, self.tags)
            _copy_rows(session, Embedding, self.embeddings)
            return
        for model, rows in ((ResultTag, self.tags), (Embedding, self.embeddings)):
            if rows:
                session.execute(insert(model), rows)


def _copy_rows(session: Session, model: type[ResultTag] | type[Embedding], rows: list[dict[str, Any]]) -> None:
    """``COPY ... FROM STDIN`` of ``rows`` into ``model``'s table on the session's connection (psycopg 3)."""
    if not rows:
        return
    columns = list(rows[0])
    table = model.__tablename__
    driver_connection = session.connection().connection.driver_connection
    assert driver_connection is not None
    with driver_connection.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[column] for column in columns])


def _write_item(
    *,
    asset: Asset,
    item: ItemResult,
    attempt: int,
    existing: dict[tuple[uuid.UUID, str], Result],
    rows: _NewRows,
) -> None:
    """Collect one item's new rows and update its replaced results and status; :func:`_replace_outputs` has already
    removed the tags and embeddings they replace."""
    for analyzer, output in item.outputs.items():
        found = existing.get((asset.id, analyzer))
        if found is None:
            rows.results.append(
                {
                    "tenant_id": asset.tenant_id,
                    "asset_id": asset.id,
                    "analyzer": analyzer,
                    "model_id": output.model_id,
                    "payload": output.payload,
                    "batch_attempt": attempt,
                }
            )
        else:
            found.model_id, found.payload, found.batch_attempt = output.model_id, output.payload, attempt
        rows.tags.extend(
            {"tenant_id": asset.tenant_id, "asset_id": asset.id, "analyzer": analyzer, "tag": tag, "score": t.score}
            for tag, t in {t.tag[:MAX_TAG_CHARS]: t for t in output.tags}.items()
        )
        if output.embedding:
            rows.embeddings.append(
                {
                    "tenant_id": asset.tenant_id,
                    "asset_id": asset.id,
                    "analyzer": analyzer,
                    "model_id": output.model_id,
                    "dim": len(output.embedding),
                    "vector": _float32_bytes(output.embedding),
                }
            )
    if item.errors and not item.outputs:
        first = next(iter(item.errors.values()))
        asset.status = AssetStatus.FAILED
        asset.error_code, asset.error_message = first.code[:64], first.message[:2000]
    else:
        asset.status = AssetStatus.DONE
        if item.errors:
            asset.error_message = "; ".join(f"{name}: {err.message}" for name, err in item.errors.items())[:2000]


def _float32_bytes(values: list[float]) -> bytes:
    import array

    packed = array.array("f", values)
    return packed.tobytes()


def link_instance(session: Session, *, batch_id: uuid.UUID, instance_id: uuid.UUID) -> bool:
    """Record that the running batch is now in flight on ``instance_id``; False when it is not running (then the
    caller runs it unlinked: a late answer is fenced by its claim anyway)."""
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == BatchStatus.RUNNING)
        .values(instance_id=instance_id)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def unlink_instance(session: Session, *, batch_id: uuid.UUID, instance_id: uuid.UUID) -> bool:
    """Forget that the batch runs on ``instance_id`` (its answer came, or the call failed). False when the link was
    gone already: the batch was released from under this call, or claimed again."""
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.instance_id == instance_id)
        .values(instance_id=None)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release_instance_batches(session: Session, *, instance_id: uuid.UUID, error: str, now: datetime) -> list[uuid.UUID]:
    """Take back the running batches in flight on an instance that is gone or failed, without waiting for their
    leases: PENDING for another try (the returned ids, to enqueue after commit), FAILED once attempts run out.

    Fenced: only batches still RUNNING and linked to this instance change. Their holder's claim stops matching (the
    status, then the next claim's attempt number), so the dead worker's late answer writes nothing.
    """
    batches = list(
        session.scalars(
            select(Batch)
            .where(Batch.instance_id == instance_id, Batch.status == BatchStatus.RUNNING)
            .order_by(Batch.created_at, Batch.id)
            .with_for_update()
        )
    )
    requeued: list[uuid.UUID] = []
    for batch in batches:
        batch.instance_id, batch.claimed_by, batch.lease_expires_at = None, None, None
        batch.last_error = error[:2000]
        if batch.attempts >= batch.max_attempts:
            _fail_batch(session, batch, now=now, message=f"analysis did not finish after {batch.attempts} attempts")
        else:
            batch.status = BatchStatus.PENDING
            requeued.append(batch.id)
    return requeued


def batches_to_requeue(session: Session, *, now: datetime, pending_grace_s: float) -> list[uuid.UUID]:
    """Batches that need a new analyze message: running ones whose lease expired, and pending ones that have
    waited longer than ``pending_grace_s`` (their message may have been lost between commit and enqueue)."""
    stale_pending = and_(
        Batch.status == BatchStatus.PENDING,
        or_(Batch.started_at.is_(None), Batch.started_at < now - timedelta(seconds=pending_grace_s)),
        Batch.created_at < now - timedelta(seconds=pending_grace_s),
    )
    expired = and_(Batch.status == BatchStatus.RUNNING, Batch.lease_expires_at < now)
    return list(
        session.scalars(select(Batch.id).where(or_(stale_pending, expired), Batch.attempts < Batch.max_attempts))
    )


def fail_exhausted_batches(session: Session, *, now: datetime) -> list[uuid.UUID]:
    """Running batches whose lease expired on their last allowed attempt: fail them and their assets."""
    exhausted = list(
        session.scalars(
            select(Batch)
            .where(
                Batch.status == BatchStatus.RUNNING, Batch.lease_expires_at < now, Batch.attempts >= Batch.max_attempts
            )
            .with_for_update()
        )
    )
    for batch in exhausted:
        batch.last_error = "the lease expired on the last allowed attempt (worker lost)"
        _fail_batch(session, batch, now=now, message=f"analysis did not finish after {batch.attempts} attempts")
    return [b.id for b in exhausted]


def _fail_batch(session: Session, batch: Batch, *, now: datetime, message: str) -> None:
    """A batch out of attempts: it and its unfinished assets fail with ``analysis_failed``."""
    batch.status, batch.finished_at, batch.lease_expires_at = BatchStatus.FAILED, now, None
    session.execute(
        update(Asset)
        .where(Asset.batch_id == batch.id, Asset.status == AssetStatus.ANALYZING)
        .values(status=AssetStatus.FAILED, error_code="analysis_failed", error_message=message)
    )


def finalize_job(session: Session, *, job_id: uuid.UUID) -> bool:
    """Mark a running job done once every asset is done or failed. Idempotent; True when the job is done."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        return False
    if job.status == JobStatus.DONE:
        return True
    if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        return False
    unfinished = session.scalar(
        select(func.count())
        .select_from(Asset)
        .where(Asset.job_id == job_id, Asset.status.not_in([AssetStatus.DONE, AssetStatus.FAILED]))
    )
    if unfinished:
        return False
    job.status = JobStatus.DONE
    job.finished_at = utcnow()
    on_job_finished(session, tenant_id=job.tenant_id, job_id=job.id)
    return True
