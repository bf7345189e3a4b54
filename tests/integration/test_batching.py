"""Batches on SQLite and on PostgreSQL: planning, leased claims fenced by the attempt number, idempotent results.

Delivery of the analyze message is at-least-once; these tests play the duplicate, late and lost deliveries directly
against orchestrator.batching, with an injected clock instead of sleeps.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple, TypeVar

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

import orchestrator.batching as batching
from gpu_worker.contract import AnalyzerOutput, BatchResult, ItemError, ItemResult, TagScore
from orchestrator.batching import (
    batches_to_requeue,
    claim_batch,
    complete_batch,
    fail_exhausted_batches,
    finalize_job,
    plan_batches,
    release_batch,
    renew_lease,
)
from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Batch, Embedding, Job, Result, ResultTag, Tenant
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, BatchStatus, JobStatus
from orchestrator.jobs import create_job, seal_job
from tests.fixtures.services import OrchestratorEnv

pytestmark = pytest.mark.integration

LEASE_S = 60.0
T = TypeVar("T")


@dataclass
class Clock:
    """The injected "now" of orchestrator.batching."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(orch_env: OrchestratorEnv, monkeypatch: pytest.MonkeyPatch) -> Clock:
    injected = Clock(utcnow())
    monkeypatch.setattr(batching, "utcnow", injected)
    return injected


def _job(
    *, assets: int, status: AssetStatus = AssetStatus.PREPARED, seal: bool = True
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A tenant's job with ``assets`` stored assets, sealed unless told otherwise."""
    with session_scope() as session:
        tenant = Tenant(name=f"t-{uuid.uuid4().hex[:8]}")
        session.add(tenant)
        session.flush()
        job = create_job(session, tenant_id=tenant.id, analyzers=["clip"], default_analyzers=["clip"])
        rows = [
            Asset(
                tenant_id=tenant.id,
                job_id=job.id,
                sha256=f"{i:064x}",
                media_kind="image",
                mime_type="image/jpeg",
                size_bytes=100,
                storage_key=f"tenants/{tenant.id.hex}/blobs/00/{i:064x}",
                original_name=f"{i}.jpg",
                status=status,
            )
            for i in range(assets)
        ]
        session.add_all(rows)
        session.flush()
        if seal:
            seal_job(session, tenant_id=tenant.id, job_id=job.id)
        return job.id, [a.id for a in rows]


def _in(fn: Callable[[Session], T]) -> T:
    """Run ``fn`` in its own committed transaction, as a task would."""
    with session_scope() as session:
        return fn(session)


def _plan(job_id: uuid.UUID, batch_size: int = 2, max_attempts: int = 3) -> list[uuid.UUID] | None:
    with session_scope() as session:
        return plan_batches(session, job_id=job_id, batch_size=batch_size, max_attempts=max_attempts)


def _claim(batch_id: uuid.UUID, worker: str, lease_s: float = LEASE_S) -> batching.Claim | None:
    with session_scope() as session:
        return claim_batch(session, batch_id=batch_id, worker_id=worker, lease_s=lease_s)


def _complete(claim: batching.Claim, result: BatchResult) -> bool:
    with session_scope() as session:
        return complete_batch(session, claim=claim, result=result, backend="in_process")


def _row(model: type[T], row_id: uuid.UUID) -> T:
    with session_scope() as session:
        row = session.get(model, row_id)
        assert row is not None
        return row


def _batch(batch_id: uuid.UUID) -> Batch:
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        return batch


def _assets_of(batch_id: uuid.UUID) -> list[Asset]:
    with session_scope() as session:
        return list(session.scalars(select(Asset).where(Asset.batch_id == batch_id).order_by(Asset.id)))


def _result(
    batch_id: uuid.UUID, asset_ids: list[uuid.UUID], tags: tuple[str, ...] = ("animal/cat", "scene/sofa")
) -> BatchResult:
    return BatchResult(
        batch_id=str(batch_id),
        items=[
            ItemResult(
                asset_id=str(asset_id),
                outputs={
                    "clip": AnalyzerOutput(
                        model_id="clip-tiny",
                        tags=[TagScore(tag=t, score=0.9 - 0.1 * i) for i, t in enumerate(tags)],
                        embedding=[0.25, -0.5, 1.0, 0.0],
                        payload={"caption": f"a cat {asset_id}"},
                    )
                },
            )
            for asset_id in asset_ids
        ],
    )


def _rows() -> dict[str, set[tuple[object, ...]]]:
    """Every result, tag and embedding row, by content (ids of tag rows left out)."""
    with session_scope() as session:
        return {
            "results": {(r.asset_id, r.analyzer, r.model_id, str(r.payload)) for r in session.scalars(select(Result))},
            "result_count": {(session.scalar(select(func.count()).select_from(Result)),)},
            "tags": {(t.asset_id, t.analyzer, t.tag, t.score) for t in session.scalars(select(ResultTag))},
            "tag_count": {(session.scalar(select(func.count()).select_from(ResultTag)),)},
            "embeddings": {(e.asset_id, e.analyzer, e.dim, e.vector) for e in session.scalars(select(Embedding))},
            "embedding_count": {(session.scalar(select(func.count()).select_from(Embedding)),)},
        }


class Planned(NamedTuple):
    job_id: uuid.UUID
    batch_id: uuid.UUID
    asset_ids: list[uuid.UUID]


@pytest.fixture
def planned(clock: Clock) -> Planned:
    """A sealed job whose two prepared assets are planned into one pending batch."""
    job_id, _ = _job(assets=2)
    (batch_id,) = _plan(job_id) or []
    return Planned(job_id, batch_id, [a.id for a in _assets_of(batch_id)])


def test_planning_waits_while_an_asset_is_still_being_prepared_then_splits_by_batch_size(clock: Clock) -> None:
    job_id, asset_ids = _job(assets=5)
    with session_scope() as session:
        session.execute(update(Asset).where(Asset.id == asset_ids[0]).values(status=AssetStatus.UPLOADED))

    assert _plan(job_id) is None
    assert _in(lambda s: s.scalar(select(func.count()).select_from(Batch))) == 0

    with session_scope() as session:
        session.execute(update(Asset).where(Asset.id == asset_ids[0]).values(status=AssetStatus.PREPARED))
    batch_ids = _plan(job_id, batch_size=2)

    assert batch_ids is not None
    assert sorted(len(_assets_of(b)) for b in batch_ids) == [1, 2, 2]
    assert {a.status for b in batch_ids for a in _assets_of(b)} == {AssetStatus.ANALYZING}
    assert sorted(a.id for b in batch_ids for a in _assets_of(b)) == sorted(asset_ids)
    assert {(_batch(b).status, _batch(b).attempts, _batch(b).max_attempts) for b in batch_ids} == {
        (BatchStatus.PENDING, 0, 3)
    }
    assert _row(Job, job_id).status == JobStatus.RUNNING


def test_planning_twice_creates_nothing_new(clock: Clock) -> None:
    job_id, _ = _job(assets=3)
    first = _plan(job_id)

    second = _plan(job_id)

    assert first is not None and len(first) == 2
    assert second == []
    assert _in(lambda s: s.scalar(select(func.count()).select_from(Batch))) == 2


def test_failed_assets_are_not_planned_and_an_open_job_is_not_planned_at_all(clock: Clock) -> None:
    job_id, asset_ids = _job(assets=3)
    with session_scope() as session:
        session.execute(update(Asset).where(Asset.id == asset_ids[1]).values(status=AssetStatus.FAILED))
    open_job, _ = _job(assets=2, seal=False)

    (batch_id,) = _plan(job_id, batch_size=16) or []

    assert sorted(a.id for a in _assets_of(batch_id)) == sorted([asset_ids[0], asset_ids[2]])
    assert _plan(open_job) == []
    assert _in(lambda s: s.scalar(select(func.count()).select_from(Batch).where(Batch.job_id == open_job))) == 0


def test_the_first_claim_wins_and_a_duplicate_delivery_finds_nothing_to_claim(planned: Planned, clock: Clock) -> None:
    _, batch_id, _ = planned

    first = _claim(batch_id, "worker-1")
    duplicate = _claim(batch_id, "worker-2")

    assert first is not None and (first.worker_id, first.attempt) == ("worker-1", 1)
    assert duplicate is None
    batch = _batch(batch_id)
    assert (batch.status, batch.claimed_by, batch.attempts) == (BatchStatus.RUNNING, "worker-1", 1)
    assert batch.lease_expires_at == clock.now + timedelta(seconds=LEASE_S)


def test_two_simultaneous_deliveries_claim_the_batch_once(planned: Planned, clock: Clock) -> None:
    _, batch_id, _ = planned
    start = threading.Barrier(2, timeout=30)
    claims: list[batching.Claim | None] = []

    def deliver(worker: str) -> None:
        with session_scope() as session:
            start.wait()
            claims.append(claim_batch(session, batch_id=batch_id, worker_id=worker, lease_s=LEASE_S))

    threads = [threading.Thread(target=deliver, args=(f"worker-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(claims) == 2
    won = [c for c in claims if c is not None]
    assert len(won) == 1 and won[0].attempt == 1
    assert (_batch(batch_id).claimed_by, _batch(batch_id).attempts) == (won[0].worker_id, 1)


def test_a_batch_redelivered_after_its_lease_expired_is_taken_over_and_the_first_worker_is_fenced_out(
    planned: Planned, clock: Clock
) -> None:
    _, batch_id, asset_ids = planned
    first = _claim(batch_id, "worker-1")
    assert first is not None
    clock.advance(LEASE_S / 2)
    assert _in(lambda s: renew_lease(s, claim=first, lease_s=LEASE_S)) is True
    clock.advance(LEASE_S - 1)
    assert _claim(batch_id, "worker-2") is None, "a renewed lease is still held"

    clock.advance(2)
    second = _claim(batch_id, "worker-2")

    assert second is not None and (second.worker_id, second.attempt) == ("worker-2", 2)
    assert _in(lambda s: renew_lease(s, claim=first, lease_s=LEASE_S)) is False
    assert _complete(first, _result(batch_id, asset_ids)) is False
    assert _in(lambda s: release_batch(s, claim=first, error="late")) is None
    assert _rows()["result_count"] == {(0,)}, "the fenced-out worker wrote nothing"
    assert _complete(second, _result(batch_id, asset_ids)) is True
    assert {r[0] for r in _rows()["results"]} == set(asset_ids)
    assert {a.status for a in _assets_of(batch_id)} == {AssetStatus.DONE}
    assert {r.batch_attempt for r in _in(lambda s: list(s.scalars(select(Result))))} == {2}


def test_a_claim_with_a_negative_lease_is_immediately_claimable_again(planned: Planned, clock: Clock) -> None:
    _, batch_id, _ = planned
    assert _claim(batch_id, "worker-1", lease_s=-1) is not None

    again = _claim(batch_id, "worker-2")

    assert again is not None and again.attempt == 2


def test_completing_a_batch_twice_with_the_same_result_leaves_the_same_rows(planned: Planned, clock: Clock) -> None:
    _, batch_id, asset_ids = planned
    claim = _claim(batch_id, "worker-1")
    assert claim is not None
    result = _result(batch_id, asset_ids)

    assert _complete(claim, result) is True
    once = _rows()
    assert _complete(claim, result) is False, "a done batch is no longer held"
    assert _rows() == once

    # The same batch written again under the same claim, as if the first commit's status change had been lost.
    with session_scope() as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(status=BatchStatus.RUNNING))
        session.execute(update(Asset).where(Asset.batch_id == batch_id).values(status=AssetStatus.ANALYZING))
    assert _complete(claim, result) is True

    assert _rows() == once
    assert once["result_count"] == {(2,)} and once["tag_count"] == {(4,)} and once["embedding_count"] == {(2,)}


def test_a_rewrite_replaces_tags_and_embeddings_and_repeated_tags_are_stored_once(
    planned: Planned, clock: Clock
) -> None:
    _, batch_id, asset_ids = planned
    first = _claim(batch_id, "worker-1", lease_s=-1)
    assert first is not None
    assert _complete(first, _result(batch_id, asset_ids, tags=("old/tag", "other/tag"))) is True
    with session_scope() as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(status=BatchStatus.PENDING))
        session.execute(update(Asset).where(Asset.batch_id == batch_id).values(status=AssetStatus.ANALYZING))
    second = _claim(batch_id, "worker-2")
    assert second is not None

    assert _complete(second, _result(batch_id, asset_ids, tags=("animal/cat", "animal/cat", "scene/sofa"))) is True

    rows = _rows()
    assert {t[2] for t in rows["tags"]} == {"animal/cat", "scene/sofa"}
    assert rows["tag_count"] == {(4,)}
    assert rows["result_count"] == {(2,)} and rows["embedding_count"] == {(2,)}


def test_long_tags_that_differ_only_after_the_stored_length_are_stored_once(planned: Planned, clock: Clock) -> None:
    _, batch_id, asset_ids = planned
    claim = _claim(batch_id, "worker-1")
    assert claim is not None
    long_a, long_b = "x" * 200 + "-a", "x" * 200 + "-b"

    assert _complete(claim, _result(batch_id, asset_ids, tags=(long_a, long_b))) is True

    assert {t[2] for t in _rows()["tags"]} == {"x" * 200}


def test_an_item_result_for_an_asset_not_in_the_batch_is_ignored(planned: Planned, clock: Clock) -> None:
    _, batch_id, asset_ids = planned
    other_job, (stranger,) = _job(assets=1)
    (other_batch,) = _plan(other_job) or []
    claim = _claim(batch_id, "worker-1")
    assert claim is not None
    result = _result(batch_id, [asset_ids[0], stranger, uuid.uuid4()])
    result.items.append(ItemResult(asset_id="../../not-a-uuid", outputs=result.items[0].outputs))

    assert _complete(claim, result) is True

    assert {r[0] for r in _rows()["results"]} == {asset_ids[0]}
    assert _row(Asset, stranger).status == AssetStatus.ANALYZING
    missing = _row(Asset, asset_ids[1])
    assert (missing.status, missing.error_code) == (AssetStatus.FAILED, "missing_result")
    assert _batch(other_batch).status == BatchStatus.PENDING


def test_an_item_with_only_errors_fails_alone(planned: Planned, clock: Clock) -> None:
    _, batch_id, asset_ids = planned
    claim = _claim(batch_id, "worker-1")
    assert claim is not None
    result = _result(batch_id, [asset_ids[0]])
    result.items.append(
        ItemResult(asset_id=str(asset_ids[1]), errors={"clip": ItemError(code="decode_failed", message="bad pixels")})
    )

    assert _complete(claim, result) is True

    statuses = {a.id: (a.status, a.error_code) for a in _assets_of(batch_id)}
    assert statuses == {asset_ids[0]: (AssetStatus.DONE, None), asset_ids[1]: (AssetStatus.FAILED, "decode_failed")}


def test_a_released_batch_goes_back_to_pending_until_its_attempts_run_out_then_fails_its_assets(clock: Clock) -> None:
    job_id, _ = _job(assets=2)
    (batch_id,) = _plan(job_id, max_attempts=2) or []

    first = _claim(batch_id, "worker-1")
    assert first is not None
    assert _in(lambda s: release_batch(s, claim=first, error="backend down")) == BatchStatus.PENDING
    batch = _batch(batch_id)
    assert (batch.status, batch.claimed_by, batch.lease_expires_at, batch.last_error) == (
        BatchStatus.PENDING,
        None,
        None,
        "backend down",
    )
    assert {a.status for a in _assets_of(batch_id)} == {AssetStatus.ANALYZING}

    second = _claim(batch_id, "worker-2")
    assert second is not None and second.attempt == 2
    assert _in(lambda s: release_batch(s, claim=second, error="still down")) == BatchStatus.FAILED

    assert _batch(batch_id).status == BatchStatus.FAILED
    assert {(a.status, a.error_code) for a in _assets_of(batch_id)} == {(AssetStatus.FAILED, "analysis_failed")}
    assert _claim(batch_id, "worker-3") is None
    assert _in(lambda s: finalize_job(s, job_id=job_id)) is True


def test_the_job_is_finalized_only_when_every_asset_is_done_or_failed(clock: Clock) -> None:
    job_id, _ = _job(assets=3)
    first_batch, second_batch = _plan(job_id, batch_size=2) or []
    claim = _claim(first_batch, "worker-1")
    assert claim is not None
    assert _complete(claim, _result(first_batch, [a.id for a in _assets_of(first_batch)])) is True

    assert _in(lambda s: finalize_job(s, job_id=job_id)) is False
    assert _row(Job, job_id).status == JobStatus.RUNNING

    claim = _claim(second_batch, "worker-1")
    assert claim is not None
    assert _in(lambda s: release_batch(s, claim=claim, error="x")) == BatchStatus.PENDING
    with session_scope() as session:
        session.execute(update(Batch).where(Batch.id == second_batch).values(max_attempts=1))
    assert _claim(second_batch, "worker-1") is None, "no attempts left"
    with session_scope() as session:
        session.execute(
            update(Asset).where(Asset.batch_id == second_batch).values(status=AssetStatus.FAILED, error_code="x")
        )

    assert _in(lambda s: finalize_job(s, job_id=job_id)) is True
    job = _row(Job, job_id)
    assert job.status == JobStatus.DONE and job.finished_at is not None
    assert _in(lambda s: finalize_job(s, job_id=job_id)) is True, "finalizing twice is harmless"


def test_the_reaper_finds_expired_running_batches_and_stale_pending_ones(clock: Clock) -> None:
    job_id, _ = _job(assets=4)
    batch_ids = _plan(job_id, batch_size=1)
    assert batch_ids is not None and len(batch_ids) == 4
    expired, held, pending, done = batch_ids
    assert _claim(expired, "worker-1", lease_s=10) is not None
    assert _claim(held, "worker-2", lease_s=LEASE_S * 10) is not None
    done_claim = _claim(done, "worker-3")
    assert done_claim is not None and _complete(done_claim, _result(done, [a.id for a in _assets_of(done)]))
    now = utcnow()

    assert set(_in(lambda s: batches_to_requeue(s, now=now, pending_grace_s=30))) == set()
    later = now + timedelta(seconds=31)
    assert set(_in(lambda s: batches_to_requeue(s, now=later, pending_grace_s=30))) == {expired, pending}


def test_a_lease_that_expires_on_the_last_attempt_fails_the_batch_and_its_assets(clock: Clock) -> None:
    job_id, _ = _job(assets=2)
    (batch_id,) = _plan(job_id, max_attempts=1) or []
    assert _claim(batch_id, "worker-1", lease_s=10) is not None
    later = clock.now + timedelta(seconds=11)

    assert _in(lambda s: batches_to_requeue(s, now=later, pending_grace_s=30)) == []
    assert _in(lambda s: fail_exhausted_batches(s, now=later)) == [batch_id]

    assert _batch(batch_id).status == BatchStatus.FAILED
    assert {(a.status, a.error_code) for a in _assets_of(batch_id)} == {(AssetStatus.FAILED, "analysis_failed")}
    assert _in(lambda s: fail_exhausted_batches(s, now=later)) == []
