"""What must hold after any fault: the checks every chaos test runs once its jobs have drained.

Use it in three steps, with the orchestrator's database env active (``session_scope`` reaches the test database)::

    wait_jobs_terminal(job_ids, timeout_s=60)        # drain: every job DONE or CANCELLED, else TimeoutError
    counts = assert_settled(job_ids, scenario="x")   # every invariant below; returns the figures
    counts.kills = 5                                 # what the test did to the system
    record(counts)                                   # tests/chaos/report.py: printed and kept as a JSON line

The invariants, each also available on its own (all take the job ids and return a :class:`Counts`):

- :func:`assert_assets_settled`: every asset ends DONE with exactly one result per analyzer of its job (no
  duplicate, no missing one), or FAILED with a reason (an error code and a message). Nothing is left uploaded,
  prepared or analyzing.
- :func:`assert_no_stuck_batches`: no batch of the jobs is PENDING or RUNNING after the drain.
- :func:`assert_jobs_terminal`: every job is DONE (or CANCELLED).
- :func:`assert_results_from_final_claims`: every result of a batch was written under the claim that finished it
  (a worker that lost its lease wrote nothing).

:func:`measure` computes the same figures without asserting, so a test can report them before it fails. Other
fault domains (instances, the budget ledger) add their own figures to :attr:`Counts.extra` and their own
``assert_...`` functions beside these.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select

from orchestrator.db.models import Asset, Batch, Job, Result
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, BatchStatus, JobStatus

TERMINAL_JOB_STATUSES = frozenset({JobStatus.DONE, JobStatus.CANCELLED})
UNSETTLED_BATCH_STATUSES = frozenset({BatchStatus.PENDING, BatchStatus.RUNNING})


@dataclass
class Counts:
    """The figures of one chaos scenario: what the system ended with, and what the test did to it.

    ``duplicates``, ``missing_results``, ``unreasoned_failures``, ``unsettled_assets``, ``stuck_batches`` and
    ``unfinished_jobs`` must be zero; the rest describe the run.
    """

    scenario: str = ""
    jobs: int = 0
    assets: int = 0
    analyzed: int = 0
    failed: int = 0
    duplicates: int = 0
    missing_results: int = 0
    unreasoned_failures: int = 0
    unsettled_assets: int = 0
    batches: int = 0
    stuck_batches: int = 0
    failed_batches: int = 0
    redelivered_batches: int = 0
    claims: int = 0
    unfinished_jobs: int = 0
    kills: int = 0
    restarts: int = 0
    seed: int | None = None
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)

    def violations(self) -> dict[str, int]:
        """The figures that must be zero but are not."""
        must_be_zero = {
            "duplicates": self.duplicates,
            "missing_results": self.missing_results,
            "unreasoned_failures": self.unreasoned_failures,
            "unsettled_assets": self.unsettled_assets,
            "stuck_batches": self.stuck_batches,
            "unfinished_jobs": self.unfinished_jobs,
        }
        return {name: value for name, value in must_be_zero.items() if value}


def _ids(job_ids: Iterable[uuid.UUID | str]) -> list[uuid.UUID]:
    return [job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(job_id) for job_id in job_ids]


def measure(job_ids: Iterable[uuid.UUID | str], *, scenario: str = "") -> Counts:
    """The figures of ``job_ids`` as they stand now, without asserting anything."""
    jobs = _ids(job_ids)
    counts = Counts(scenario=scenario, jobs=len(jobs))
    with session_scope() as session:
        analyzers_of = {job.id: set(job.analyzers) for job in session.scalars(select(Job).where(Job.id.in_(jobs)))}
        counts.unfinished_jobs = sum(
            1
            for status in session.scalars(select(Job.status).where(Job.id.in_(jobs)))
            if status not in TERMINAL_JOB_STATUSES
        ) + (len(jobs) - len(analyzers_of))
        results_per: dict[tuple[uuid.UUID, str], int] = {
            (asset_id, analyzer): int(n)
            for asset_id, analyzer, n in session.execute(
                select(Result.asset_id, Result.analyzer, func.count(Result.id))
                .join(Asset, Asset.id == Result.asset_id)
                .where(Asset.job_id.in_(jobs))
                .group_by(Result.asset_id, Result.analyzer)
            ).all()
        }
        counts.duplicates = sum(n - 1 for n in results_per.values() if n > 1)
        for asset in session.scalars(select(Asset).where(Asset.job_id.in_(jobs))):
            counts.assets += 1
            if asset.status == AssetStatus.DONE:
                counts.analyzed += 1
                expected = analyzers_of.get(asset.job_id, set())
                # A file whose analyzer reported an error for one model keeps the others' results and a message.
                have = {analyzer for (asset_id, analyzer) in results_per if asset_id == asset.id}
                if not have or (not (expected <= have) and not asset.error_message):
                    counts.missing_results += 1
            elif asset.status == AssetStatus.FAILED:
                counts.failed += 1
                if not (asset.error_code and asset.error_message):
                    counts.unreasoned_failures += 1
            else:
                counts.unsettled_assets += 1
        for status, attempts in session.execute(select(Batch.status, Batch.attempts).where(Batch.job_id.in_(jobs))):
            counts.batches += 1
            counts.claims += int(attempts)
            counts.redelivered_batches += int(attempts > 1)
            counts.stuck_batches += int(status in UNSETTLED_BATCH_STATUSES)
            counts.failed_batches += int(status == BatchStatus.FAILED)
    return counts


def assert_assets_settled(job_ids: Iterable[uuid.UUID | str], *, scenario: str = "") -> Counts:
    """Every asset is DONE with one result per analyzer, or FAILED with a reason; none is left in between."""
    counts = measure(job_ids, scenario=scenario)
    assert counts.duplicates == 0, f"{counts.duplicates} duplicate results: {counts}"
    assert counts.missing_results == 0, f"{counts.missing_results} done assets lack a result: {counts}"
    assert counts.unreasoned_failures == 0, f"{counts.unreasoned_failures} assets failed without a reason: {counts}"
    assert counts.unsettled_assets == 0, f"{counts.unsettled_assets} assets never settled: {counts}"
    assert counts.assets > 0, "no assets: the scenario checked nothing"
    return counts


def assert_no_stuck_batches(job_ids: Iterable[uuid.UUID | str], *, scenario: str = "") -> Counts:
    """No batch of the jobs is still PENDING or RUNNING."""
    counts = measure(job_ids, scenario=scenario)
    assert counts.stuck_batches == 0, f"{counts.stuck_batches} batches stuck pending or running: {counts}"
    return counts


def assert_jobs_terminal(job_ids: Iterable[uuid.UUID | str], *, scenario: str = "") -> Counts:
    """Every job reached DONE or CANCELLED."""
    counts = measure(job_ids, scenario=scenario)
    assert counts.unfinished_jobs == 0, f"{counts.unfinished_jobs} jobs did not finish: {counts}"
    return counts


def assert_settled(job_ids: Iterable[uuid.UUID | str], *, scenario: str = "") -> Counts:
    """All the invariants above at once; returns the figures (one query pass)."""
    counts = measure(job_ids, scenario=scenario)
    assert not counts.violations(), f"invariants violated {counts.violations()}: {counts}"
    assert counts.assets > 0, "no assets: the scenario checked nothing"
    return counts


def jobs_terminal(job_ids: Iterable[uuid.UUID | str]) -> bool:
    """Whether every job is DONE or CANCELLED now."""
    jobs = _ids(job_ids)
    with session_scope() as session:
        statuses = list(session.scalars(select(Job.status).where(Job.id.in_(jobs))))
    return len(statuses) == len(jobs) and all(status in TERMINAL_JOB_STATUSES for status in statuses)


def wait_jobs_terminal(job_ids: Iterable[uuid.UUID | str], timeout_s: float, interval_s: float = 0.25) -> None:
    """Block until every job is terminal (the drain); TimeoutError with the current figures after ``timeout_s``."""
    jobs = _ids(job_ids)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if jobs_terminal(jobs):
            return
        time.sleep(interval_s)
    raise TimeoutError(f"jobs not terminal after {timeout_s}s: {measure(jobs)}")


def assert_results_from_final_claims(job_ids: Iterable[uuid.UUID | str]) -> int:
    """Every result of a done batch carries the attempt number that finished the batch: writes are fenced by the
    claim, so no earlier (killed or taken-over) holder's write survived. Returns how many results were checked."""
    jobs = _ids(job_ids)
    with session_scope() as session:
        rows = session.execute(
            select(Result.batch_attempt, Batch.attempts, Batch.id)
            .join(Asset, Asset.id == Result.asset_id)
            .join(Batch, Batch.id == Asset.batch_id)
            .where(Asset.job_id.in_(jobs), Batch.status == BatchStatus.DONE)
        ).all()
    stale = [(str(batch_id), written, final) for written, final, batch_id in rows if written != final]
    assert not stale, f"results written by a claim that did not finish the batch (batch, written, final): {stale}"
    return len(rows)
