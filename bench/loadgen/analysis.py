"""After the load: wait until the Celery worker has analyzed everything, then compare what the database holds with
what the API accepted — no asset lost, none extra, each done with exactly one result per analyzer, each job done.

Reads the database the current process is configured for (``ORCH_DATABASE_URL``), the same one the stack uses.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select

from bench.loadgen.driver import LoadRun
from orchestrator.db.models import Asset, Batch, Job, Result
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, JobStatus

POLL_INTERVAL_S = 0.5
TERMINAL_ASSET = (AssetStatus.DONE, AssetStatus.FAILED)


@dataclass(frozen=True)
class AnalysisCheck:
    """What the database says about the run's assets, and how long draining the queue took."""

    accepted: int
    in_database: int
    lost: int
    unexpected: int
    done: int
    failed: int
    not_finished: int
    assets_without_one_result: int
    results: int
    jobs_sealed: int
    jobs_done: int
    batches: int
    batches_claimed_more_than_once: int
    drain_s: float

    @property
    def all_analyzed_once(self) -> bool:
        """Every accepted asset is in the database, done, with exactly one result per analyzer, in a done job."""
        return (
            self.lost == 0
            and self.unexpected == 0
            and self.done == self.accepted
            and self.assets_without_one_result == 0
            and self.jobs_done == self.jobs_sealed
        )


def _tenant_ids(run: LoadRun) -> list[uuid.UUID]:
    return [t.tenant.id for t in run.tenants]


def _unfinished(tenant_ids: list[uuid.UUID]) -> int:
    with session_scope() as session:
        assets = session.scalar(
            select(func.count())
            .select_from(Asset)
            .where(Asset.tenant_id.in_(tenant_ids), Asset.status.not_in(TERMINAL_ASSET))
        )
        jobs = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id.in_(tenant_ids), Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        )
    return int(assets or 0) + int(jobs or 0)


def wait_for_analysis(run: LoadRun, timeout_s: float) -> float:
    """Block until no asset or sealed job of the run's tenants is unfinished, or ``timeout_s`` passes; returns the
    seconds waited (``timeout_s`` when it ran out: the check then reports what is missing)."""
    tenant_ids = _tenant_ids(run)
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if _unfinished(tenant_ids) == 0:
            break
        time.sleep(POLL_INTERVAL_S)
    return time.monotonic() - start


def check_analysis(run: LoadRun, drain_s: float) -> AnalysisCheck:
    """Compare the database with the run's accepted assets and sealed jobs."""
    tenant_ids = _tenant_ids(run)
    accepted = {uuid.UUID(a) for a in run.asset_ids}
    sealed = {uuid.UUID(j) for t in run.tenants for j in t.sealed_jobs}
    with session_scope() as session:
        rows = dict(session.execute(select(Asset.id, Asset.status).where(Asset.tenant_id.in_(tenant_ids))).all())
        job_analyzers = dict(session.execute(select(Job.id, Job.analyzers).where(Job.id.in_(sealed))).all())
        asset_jobs = dict(session.execute(select(Asset.id, Asset.job_id).where(Asset.tenant_id.in_(tenant_ids))).all())
        results = Counter(session.scalars(select(Result.asset_id).where(Result.tenant_id.in_(tenant_ids))))
        job_status = dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(sealed))).all())
        attempts = list(session.scalars(select(Batch.attempts).where(Batch.tenant_id.in_(tenant_ids))))
    statuses = Counter(rows[a] for a in accepted if a in rows)
    # Results are unique per (asset, analyzer), so "once" means one row for each analyzer its job runs.
    without_one = sum(1 for a in accepted if a not in rows or results[a] != len(job_analyzers.get(asset_jobs[a], [])))
    return AnalysisCheck(
        accepted=len(accepted),
        in_database=len(accepted & rows.keys()),
        lost=len(accepted - rows.keys()),
        unexpected=len(rows.keys() - accepted),
        done=statuses[AssetStatus.DONE],
        failed=statuses[AssetStatus.FAILED],
        not_finished=sum(n for s, n in statuses.items() if s not in TERMINAL_ASSET),
        assets_without_one_result=without_one,
        results=sum(results.values()),
        jobs_sealed=len(sealed),
        jobs_done=sum(1 for s in job_status.values() if s == JobStatus.DONE),
        batches=len(attempts),
        batches_claimed_more_than_once=sum(1 for n in attempts if n > 1),
        drain_s=drain_s,
    )
