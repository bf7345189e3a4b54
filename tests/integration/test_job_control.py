"""Cancelling a job, retrying its failed files, its report (backends and cost) and its result export, on SQLite and
PostgreSQL: the domain functions against the real database, then the REST routes that expose them.

Delivery of the analyze message is at-least-once, so a batch may finish after its job was cancelled: these tests
play that late completion directly against orchestrator.batching.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from gpu_worker.contract import AnalyzerOutput, BatchResult, ItemError, ItemResult, TagScore
from orchestrator.api.main import create_app
from orchestrator.batching import (
    Claim,
    batches_to_requeue,
    claim_batch,
    complete_batch,
    finalize_job,
    plan_batches,
)
from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Batch, Instance, Job, Result
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, BatchStatus, JobStatus
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.job_control import cancel_job, retry_failed
from orchestrator.job_reports import CSV_COLUMNS, iter_result_rows, job_report
from orchestrator.jobs import create_job, seal_job
from orchestrator.settings import get_settings
from tests.fixtures.cloud_harness import T0, CloudHarness, add_pending_batch
from tests.fixtures.factories import TenantWithKey, make_tenant
from tests.fixtures.services import OrchestratorEnv

pytestmark = pytest.mark.integration

LEASE_S = 60.0


@dataclass
class JobRows:
    """A tenant's job and its asset ids, in upload order."""

    tenant_id: uuid.UUID
    job_id: uuid.UUID
    asset_ids: list[uuid.UUID]


def _job(tenant_id: uuid.UUID, *, assets: int, analyzers: tuple[str, ...] = ("clip",)) -> JobRows:
    """A sealed job with ``assets`` stored, prepared images."""
    with session_scope() as session:
        job = create_job(session, tenant_id=tenant_id, analyzers=list(analyzers), default_analyzers=["clip"])
        rows = [
            Asset(
                tenant_id=tenant_id,
                job_id=job.id,
                sha256=f"{uuid.uuid4().hex}{i:032x}",
                media_kind="image",
                mime_type="image/jpeg",
                size_bytes=100,
                storage_key=f"tenants/{tenant_id.hex}/blobs/00/{uuid.uuid4().hex}",
                original_name=f"photo-{i}.jpg",
                status=AssetStatus.PREPARED,
                created_at=utcnow() + timedelta(milliseconds=i),
            )
            for i in range(assets)
        ]
        session.add_all(rows)
        session.flush()
        seal_job(session, tenant_id=tenant_id, job_id=job.id)
        return JobRows(tenant_id, job.id, [a.id for a in rows])


def _rejected(rows: JobRows, *, name: str = "notes.txt") -> uuid.UUID:
    """A file refused at upload: a failed asset without stored bytes."""
    with session_scope() as session:
        asset = Asset(
            tenant_id=rows.tenant_id,
            job_id=rows.job_id,
            size_bytes=12,
            original_name=name,
            status=AssetStatus.FAILED,
            error_code="not_media",
            error_message="the file's bytes are not a supported image, video or audio format",
        )
        session.add(asset)
        session.flush()
        return asset.id


def _plan(job_id: uuid.UUID, batch_size: int = 2) -> list[uuid.UUID]:
    with session_scope() as session:
        planned = plan_batches(session, job_id=job_id, batch_size=batch_size, max_attempts=3)
    assert planned is not None
    return planned


def _claim(batch_id: uuid.UUID, worker: str = "worker-1") -> Claim:
    with session_scope() as session:
        claim = claim_batch(session, batch_id=batch_id, worker_id=worker, lease_s=LEASE_S)
    assert claim is not None
    return claim


def _batch_assets(batch_id: uuid.UUID) -> list[uuid.UUID]:
    with session_scope() as session:
        return list(session.scalars(select(Asset.id).where(Asset.batch_id == batch_id).order_by(Asset.id)))


def _clip_result(
    batch_id: uuid.UUID, asset_ids: list[uuid.UUID], *, failing: frozenset[uuid.UUID] = frozenset()
) -> BatchResult:
    items = []
    for asset_id in asset_ids:
        if asset_id in failing:
            items.append(
                ItemResult(
                    asset_id=str(asset_id), errors={"clip": ItemError(code="decode_failed", message="cannot decode")}
                )
            )
        else:
            items.append(
                ItemResult(
                    asset_id=str(asset_id),
                    outputs={
                        "clip": AnalyzerOutput(
                            model_id="clip-tiny",
                            tags=[TagScore(tag="animal/cat", score=0.9)],
                            payload={"nsfw_score": 0.01},
                        )
                    },
                )
            )
    return BatchResult(batch_id=str(batch_id), items=items)


def _complete(claim: Claim, result: BatchResult, backend: str = "in_process") -> bool:
    with session_scope() as session:
        return complete_batch(session, claim=claim, result=result, backend=backend)


def _finalize(job_id: uuid.UUID) -> bool:
    with session_scope() as session:
        return finalize_job(session, job_id=job_id)


def _assets(job_id: uuid.UUID) -> dict[uuid.UUID, Asset]:
    with session_scope() as session:
        return {a.id: a for a in session.scalars(select(Asset).where(Asset.job_id == job_id))}


def _job_row(job_id: uuid.UUID) -> Job:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _batch_statuses(job_id: uuid.UUID) -> dict[uuid.UUID, str]:
    with session_scope() as session:
        return {b.id: str(b.status) for b in session.scalars(select(Batch).where(Batch.job_id == job_id))}


@pytest.fixture
def tenant(orch_env: OrchestratorEnv) -> TenantWithKey:
    return make_tenant()


# --- cancel ---------------------------------------------------------------------------------------------------


def test_cancel_stops_pending_and_running_batches_and_fails_only_the_unfinished_files(tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=5)
    first, second, third = _plan(rows.job_id)
    done_claim = _claim(first)
    assert _complete(done_claim, _clip_result(first, _batch_assets(first)))
    _claim(second)  # in flight on some backend when the user cancels

    with session_scope() as session:
        outcome = cancel_job(session, tenant_id=tenant.id, job_id=rows.job_id)
        assert outcome.cancelled_now and outcome.stopped_batches == 2 and outcome.cancelled_assets == 3

    job = _job_row(rows.job_id)
    assert job.status == JobStatus.CANCELLED and job.finished_at is not None
    assert _batch_statuses(rows.job_id) == {first: "done", second: "failed", third: "failed"}
    assets = _assets(rows.job_id)
    assert sorted(str(a.status) for a in assets.values()) == ["done", "done", "failed", "failed", "failed"]
    assert {(a.error_code, a.error_message) for a in assets.values() if a.status == AssetStatus.FAILED} == {
        ("cancelled", "the job was cancelled before this file was analyzed")
    }


def test_a_batch_that_finishes_after_the_cancel_writes_nothing_and_revives_no_file(tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=2)
    (batch_id,) = _plan(rows.job_id)
    claim = _claim(batch_id)
    with session_scope() as session:
        cancel_job(session, tenant_id=tenant.id, job_id=rows.job_id)

    written = _complete(claim, _clip_result(batch_id, rows.asset_ids))

    assert written is False
    assert {str(a.status) for a in _assets(rows.job_id).values()} == {"failed"}
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 0
    assert _finalize(rows.job_id) is False
    assert _job_row(rows.job_id).status == JobStatus.CANCELLED, "finalize never turns a cancelled job into done"


def test_a_cancelled_job_is_neither_planned_nor_requeued(tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=3)
    _plan(rows.job_id)
    with session_scope() as session:
        cancel_job(session, tenant_id=tenant.id, job_id=rows.job_id)
    with session_scope() as session:  # a straggling file that was still uploading reaches PREPARED anyway
        session.execute(update(Asset).where(Asset.id == rows.asset_ids[0]).values(status=AssetStatus.PREPARED))

    assert _plan(rows.job_id) == []
    with session_scope() as session:
        assert batches_to_requeue(session, now=utcnow() + timedelta(hours=1), pending_grace_s=1) == []
        assert session.scalar(select(func.count()).select_from(Batch).where(Batch.job_id == rows.job_id)) == 2


def test_cancelling_twice_is_harmless_and_a_done_job_cannot_be_cancelled(tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=1)
    with session_scope() as session:
        assert cancel_job(session, tenant_id=tenant.id, job_id=rows.job_id).cancelled_now
    with session_scope() as session:
        again = cancel_job(session, tenant_id=tenant.id, job_id=rows.job_id)
        assert (again.cancelled_now, again.stopped_batches, again.cancelled_assets) == (False, 0, 0)

    done = _job(tenant.id, assets=1)
    (batch_id,) = _plan(done.job_id)
    assert _complete(_claim(batch_id), _clip_result(batch_id, done.asset_ids))
    assert _finalize(done.job_id)
    with session_scope() as session, pytest.raises(ConflictError) as refused:
        cancel_job(session, tenant_id=tenant.id, job_id=done.job_id)
    assert refused.value.code == "job_finished"
    assert _job_row(done.job_id).status == JobStatus.DONE


def test_another_tenants_job_cannot_be_cancelled_or_retried(tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=1)
    other = make_tenant()

    with session_scope() as session, pytest.raises(NotFoundError):
        cancel_job(session, tenant_id=other.id, job_id=rows.job_id)
    with session_scope() as session, pytest.raises(NotFoundError):
        retry_failed(session, tenant_id=other.id, job_id=rows.job_id)
    assert _job_row(rows.job_id).status == JobStatus.QUEUED


def test_a_cancelled_jobs_batches_rent_no_gpu(cloud_sqlite: CloudHarness) -> None:
    from orchestrator import budgets

    h = cloud_sqlite
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(
            session,
            tenant_id=tenant.id,
            changes={
                "daily_cap_usd": 10,
                "monthly_cap_usd": 100,
                "soft_cap_usd": 80,
                "scale_up_wait_s": 0,
                "idle_timeout_s": 120,
                "boot_deadline_s": 300,
                "max_instances": 2,
            },
            now=T0,
        )
    cancelled_batch = add_pending_batch(tenant.id, assets=8, created_at=T0)
    with session_scope() as session:
        batch = session.get(Batch, cancelled_batch)
        assert batch is not None
        cancel_job(session, tenant_id=tenant.id, job_id=batch.job_id, now=T0)

    assert h.tick().rented == [], "nothing is pending once the job is cancelled"

    add_pending_batch(tenant.id, assets=8, created_at=T0)
    h.clock.t = 5
    assert len(h.tick().rented) == 1, "the same tenant's live work still rents"


# --- retry ----------------------------------------------------------------------------------------------------


def test_retry_sends_files_that_failed_analysis_back_in_a_new_batch_and_they_can_end_done(
    tenant: TenantWithKey,
) -> None:
    rows = _job(tenant.id, assets=3)
    (batch_id,) = _plan(rows.job_id, batch_size=16)
    broken = rows.asset_ids[1]
    assert _complete(_claim(batch_id), _clip_result(batch_id, rows.asset_ids, failing=frozenset({broken})))
    assert _finalize(rows.job_id)
    rejected = _rejected(rows)

    with session_scope() as session:
        outcome = retry_failed(session, tenant_id=tenant.id, job_id=rows.job_id)
        assert (outcome.retried, outcome.to_prepare, outcome.plan) == (1, [], True)
        assert [(n.asset_id, n.code) for n in outcome.not_retryable] == [(rejected, "not_media")]

    job = _job_row(rows.job_id)
    assert (job.status, job.finished_at) == (JobStatus.QUEUED, None)
    asset = _assets(rows.job_id)[broken]
    assert (asset.status, asset.batch_id, asset.error_code) == (AssetStatus.PREPARED, None, None)

    (new_batch,) = _plan(rows.job_id)
    assert new_batch != batch_id and _batch_assets(new_batch) == [broken]
    assert _complete(_claim(new_batch), _clip_result(new_batch, [broken]))
    assert _finalize(rows.job_id)

    assets = _assets(rows.job_id)
    assert assets[broken].status == AssetStatus.DONE
    assert assets[rejected].status == AssetStatus.FAILED, "a rejected upload has no bytes to retry"
    assert _job_row(rows.job_id).status == JobStatus.DONE


def test_retry_sends_a_file_that_failed_before_preparation_back_to_be_prepared(tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=2)
    with session_scope() as session:
        session.execute(
            update(Asset)
            .where(Asset.id == rows.asset_ids[0])
            .values(status=AssetStatus.FAILED, error_code="unreadable", error_message="probe failed")
        )

    with session_scope() as session:
        outcome = retry_failed(session, tenant_id=tenant.id, job_id=rows.job_id)

    assert (outcome.retried, outcome.to_prepare, outcome.plan) == (1, [rows.asset_ids[0]], True)
    assert _assets(rows.job_id)[rows.asset_ids[0]].status == AssetStatus.UPLOADED
    assert _job_row(rows.job_id).status == JobStatus.QUEUED


def test_the_reaper_prepares_again_a_retried_file_of_a_running_job_whose_message_was_lost(
    tenant: TenantWithKey,
) -> None:
    from orchestrator.tasks.jobs import reap

    rows = _job(tenant.id, assets=3)
    _plan(rows.job_id, batch_size=16)  # the job is RUNNING now
    lost, fresh = rows.asset_ids[0], rows.asset_ids[1]
    long_ago = utcnow() - timedelta(minutes=10)
    with session_scope() as session:
        session.execute(
            update(Asset)
            .where(Asset.id == lost)
            .values(status=AssetStatus.UPLOADED, batch_id=None, updated_at=long_ago)
        )
        session.execute(update(Asset).where(Asset.id == fresh).values(status=AssetStatus.UPLOADED, batch_id=None))

    sent = reap()

    assert sent["prepared"] == 1, "only the file whose prepare message is overdue; the fresh one's is on its way"
    assert reap()["prepared"] == 0, "a re-sent prepare waits another grace before it is sent again"


def test_retry_after_cancel_puts_the_cancelled_files_back_to_work(tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=2)
    (batch_id,) = _plan(rows.job_id)
    with session_scope() as session:
        cancel_job(session, tenant_id=tenant.id, job_id=rows.job_id)

    with session_scope() as session:
        outcome = retry_failed(session, tenant_id=tenant.id, job_id=rows.job_id)

    assert outcome.retried == 2 and outcome.plan
    assert _job_row(rows.job_id).status == JobStatus.QUEUED
    (new_batch,) = _plan(rows.job_id)
    assert sorted(_batch_assets(new_batch)) == sorted(rows.asset_ids)
    assert _batch_statuses(rows.job_id)[batch_id] == "failed", "the cancelled batch stays stopped"


def test_retry_with_nothing_failed_changes_nothing(tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=1)

    with session_scope() as session:
        outcome = retry_failed(session, tenant_id=tenant.id, job_id=rows.job_id)

    assert (outcome.retried, outcome.plan, outcome.not_retryable) == (0, False, [])
    assert _job_row(rows.job_id).status == JobStatus.QUEUED


# --- report -----------------------------------------------------------------------------------------------------


def _instance(tenant_id: uuid.UUID, *, gpu: str, price_musd: int, ready_at: Any, destroyed_at: Any = None) -> uuid.UUID:
    with session_scope() as session:
        row = Instance(
            tenant_id=tenant_id,
            provider="vast",
            label=f"mam-test-{uuid.uuid4().hex[:8]}",
            offer_id="101",
            machine_id=11,
            gpu_name=gpu,
            price_per_h_musd=price_musd,
            state="destroyed" if destroyed_at else "ready",
            worker_token="t",
            tls_cert_pem="",
            created_at=ready_at - timedelta(seconds=60),
            ready_at=ready_at,
            destroyed_at=destroyed_at,
        )
        session.add(row)
        session.flush()
        return row.id


def _ran(
    batch_id: uuid.UUID, *, backend: str, start: Any, seconds: float, instance_id: uuid.UUID | None = None
) -> None:
    with session_scope() as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(
                status=BatchStatus.DONE,
                backend=backend,
                started_at=start,
                finished_at=start + timedelta(seconds=seconds),
                instance_id=instance_id,
                attempts=1,
            )
        )
        session.execute(update(Asset).where(Asset.batch_id == batch_id).values(status=AssetStatus.DONE))


def test_the_report_names_each_backend_and_estimates_cloud_cost_from_run_time_and_price(tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=7)
    b1, b2, b3, b4 = _plan(rows.job_id)
    start = utcnow() - timedelta(hours=1)
    recorded = _instance(tenant.id, gpu="RTX 5090", price_musd=720_000, ready_at=start - timedelta(minutes=5))
    _ran(b1, backend="cloud", start=start, seconds=600, instance_id=recorded)  # 10 min at $0.72/h = $0.12
    _ran(b2, backend="local", start=start, seconds=30)
    _ran(b3, backend="in_process", start=start, seconds=90)
    with session_scope() as session:
        session.execute(update(Asset).where(Asset.id == rows.asset_ids[-1]).values(status=AssetStatus.FAILED))

    with session_scope() as session:
        report = job_report(session, tenant_id=tenant.id, job_id=rows.job_id)

    by_kind = {use.kind: use for use in report.backends}
    assert set(by_kind) == {"cloud", "local", "in_process"}
    cloud = by_kind["cloud"]
    assert (cloud.label, cloud.gpu_name, cloud.instance_id, cloud.inferred) == (
        "cloud instance (RTX 5090)",
        "RTX 5090",
        recorded,
        False,
    )
    assert (cloud.batches, cloud.assets, cloud.run_s) == (1, 2, 600.0)
    assert cloud.cost_usd == pytest.approx(0.12)
    assert (by_kind["local"].label, by_kind["local"].cost_usd) == ("local GPU worker", 0.0)
    assert (by_kind["in_process"].label, by_kind["in_process"].cost_usd) == ("in-process (CPU)", 0.0)
    assert report.cost_usd == pytest.approx(0.12) and report.cost_is_estimate
    assert report.batch_counts == {"done": 3, "pending": 1}
    assert [line.backend_label for line in report.batches if line.id == b4] == ["waiting for a backend"]
    assert [f.asset_id for f in report.failed] == [rows.asset_ids[-1]] and report.failed_total == 1


def test_a_cloud_batch_without_a_recorded_instance_is_charged_to_the_one_instance_alive_then(
    tenant: TenantWithKey,
) -> None:
    rows = _job(tenant.id, assets=1)
    (batch_id,) = _plan(rows.job_id)
    start = utcnow() - timedelta(hours=2)
    _instance(
        tenant.id,
        gpu="RTX 3060",
        price_musd=100_000,
        ready_at=start - timedelta(hours=3),
        destroyed_at=start - timedelta(hours=2, minutes=30),
    )
    alive = _instance(tenant.id, gpu="RTX 4090", price_musd=360_000, ready_at=start - timedelta(minutes=1))
    _ran(batch_id, backend="cloud", start=start, seconds=1800)

    with session_scope() as session:
        report = job_report(session, tenant_id=tenant.id, job_id=rows.job_id)

    (use,) = report.backends
    assert (use.instance_id, use.gpu_name, use.inferred) == (alive, "RTX 4090", True)
    assert use.cost_usd == pytest.approx(0.18)


# --- export -----------------------------------------------------------------------------------------------------


def _rich_results(rows: JobRows) -> None:
    """Results as the real analyzers write them: CLIP tags with NSFW scores, YOLO counts, faces, a transcript."""
    (batch_id,) = _plan(rows.job_id, batch_size=16)
    photo, clip_only, broken = rows.asset_ids
    outputs = {
        "clip": AnalyzerOutput(
            model_id="clip",
            tags=[TagScore(tag="animal/cat", score=0.91234), TagScore(tag="scene/indoor", score=0.5)],
            payload={"nsfw_score": 0.2, "nsfw_classifier_score": 0.03, "categories": {}},
        ),
        "objects": AnalyzerOutput(
            model_id="yolo",
            tags=[TagScore(tag="objects/person", score=0.8)],
            payload={
                "counts": {"person": 2, "cat": 1},
                "person_count": 2,
                "detections": [],
                "image_width": 640,
                "image_height": 480,
            },
        ),
        "faces": AnalyzerOutput(model_id="facenet", payload={"face_count": 1, "faces": []}),
        "transcribe": AnalyzerOutput(model_id="whisper", payload={"text": '=HYPERLINK("x") hello', "segments": []}),
    }
    result = BatchResult(
        batch_id=str(batch_id),
        items=[
            ItemResult(asset_id=str(photo), outputs=outputs),
            ItemResult(
                asset_id=str(clip_only),
                outputs={"clip": AnalyzerOutput(model_id="clip", payload={"nsfw_score": 0.7})},
            ),
            ItemResult(asset_id=str(broken), errors={"clip": ItemError(code="decode_failed", message="bad bytes")}),
        ],
    )
    assert _complete(_claim(batch_id), result)


def test_export_rows_carry_tags_counts_transcript_nsfw_and_errors(tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=3, analyzers=("clip", "objects", "faces", "transcribe"))
    _rich_results(rows)

    with session_scope() as session:
        exported = list(iter_result_rows(session, tenant_id=tenant.id, job_id=rows.job_id, page_rows=2))

    assert [r.name for r in exported] == ["photo-0.jpg", "photo-1.jpg", "photo-2.jpg"], "upload order, across pages"
    photo, clip_only, broken = exported
    assert photo.tags == [
        {"tag": "animal/cat", "score": 0.9123},
        {"tag": "objects/person", "score": 0.8},
        {"tag": "scene/indoor", "score": 0.5},
    ]
    assert (photo.object_count, photo.face_count, photo.person_count) == (3, 1, 2)
    assert photo.transcript == '=HYPERLINK("x") hello'
    assert photo.nsfw_score == 0.03, "the classifier's score wins over CLIP's prompt score"
    assert (clip_only.nsfw_score, clip_only.object_count, clip_only.transcript) == (0.7, None, None)
    assert (broken.status, broken.error_code, broken.error_message) == ("failed", "decode_failed", "bad bytes")


# --- REST -------------------------------------------------------------------------------------------------------


@pytest.fixture
def client(orch_env: OrchestratorEnv) -> TestClient:
    get_settings.cache_clear()
    return TestClient(create_app())


def test_rest_cancel_and_retry_answer_with_the_job_and_what_changed(client: TestClient, tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=2)
    _rejected(rows, name="readme.txt")

    cancelled = client.post(f"/api/v1/jobs/{rows.job_id}/cancel", headers=tenant.headers)
    again = client.post(f"/api/v1/jobs/{rows.job_id}/cancel", headers=tenant.headers)
    retried = client.post(f"/api/v1/jobs/{rows.job_id}/retry", headers=tenant.headers)

    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert (body["job"]["status"], body["cancelled_now"], body["cancelled_files"]) == ("cancelled", True, 2)
    assert again.json()["cancelled_now"] is False
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert (body["job"]["status"], body["retried"]) == ("queued", 2)
    assert [(n["name"], n["code"]) for n in body["not_retryable"]] == [("readme.txt", "not_media")]


def test_rest_cancel_of_a_done_job_is_a_conflict_and_uploads_to_a_cancelled_job_say_why(
    client: TestClient, tenant: TenantWithKey
) -> None:
    opened = client.post("/api/v1/jobs", json={"name": "x"}, headers=tenant.headers).json()
    client.post(f"/api/v1/jobs/{opened['id']}/cancel", headers=tenant.headers)

    upload = client.post(
        f"/api/v1/jobs/{opened['id']}/files",
        files={"files": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")},
        headers=tenant.headers,
    )

    assert upload.status_code == 409 and upload.json()["detail"]["code"] == "job_cancelled"
    done = _job(tenant.id, assets=1)
    (batch_id,) = _plan(done.job_id)
    assert _complete(_claim(batch_id), _clip_result(batch_id, done.asset_ids)) and _finalize(done.job_id)
    refused = client.post(f"/api/v1/jobs/{done.job_id}/cancel", headers=tenant.headers)
    assert refused.status_code == 409 and refused.json()["detail"]["code"] == "job_finished"


def test_rest_report_and_result_downloads_in_json_and_csv(client: TestClient, tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=3, analyzers=("clip", "objects", "faces", "transcribe"))
    _rich_results(rows)

    report = client.get(f"/api/v1/jobs/{rows.job_id}/report", headers=tenant.headers)
    as_json = client.get(f"/api/v1/jobs/{rows.job_id}/results?format=json", headers=tenant.headers)
    as_csv = client.get(f"/api/v1/jobs/{rows.job_id}/results?format=csv", headers=tenant.headers)
    bad = client.get(f"/api/v1/jobs/{rows.job_id}/results?format=xml", headers=tenant.headers)

    assert report.status_code == 200
    assert [(b["kind"], b["assets"], b["cost_usd"]) for b in report.json()["backends"]] == [("in_process", 3, 0.0)]
    assert [f["code"] for f in report.json()["failed"]] == ["decode_failed"]
    assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/json"
    assert "attachment" in as_json.headers["content-disposition"]
    document = json.loads(as_json.text)
    assert document["job"]["id"] == str(rows.job_id)
    assert [(a["name"], a["face_count"], a["nsfw_score"]) for a in document["assets"]] == [
        ("photo-0.jpg", 1, 0.03),
        ("photo-1.jpg", None, 0.7),
        ("photo-2.jpg", None, None),
    ]
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(as_csv.text)))
    assert tuple(table[0]) == CSV_COLUMNS
    first = dict(zip(CSV_COLUMNS, table[1], strict=True))
    assert first["tags"] == "animal/cat=0.9123; objects/person=0.8; scene/indoor=0.5"
    assert (first["object_count"], first["face_count"], first["person_count"]) == ("3", "1", "2")
    assert first["transcript"] == '\'=HYPERLINK("x") hello', "a cell a spreadsheet would run as a formula is quoted"
    assert len(table) == 4
    assert bad.status_code == 422 and bad.json()["detail"]["code"] == "invalid_request"


def test_rest_job_control_routes_answer_404_for_another_tenants_job(client: TestClient, tenant: TenantWithKey) -> None:
    rows = _job(tenant.id, assets=1)
    other = make_tenant()

    answers = [
        client.post(f"/api/v1/jobs/{rows.job_id}/cancel", headers=other.headers),
        client.post(f"/api/v1/jobs/{rows.job_id}/retry", headers=other.headers),
        client.get(f"/api/v1/jobs/{rows.job_id}/report", headers=other.headers),
        client.get(f"/api/v1/jobs/{rows.job_id}/results?format=csv", headers=other.headers),
    ]

    assert [(a.status_code, a.json()["detail"]["code"]) for a in answers] == [(404, "not_found")] * 4
    assert _job_row(rows.job_id).status == JobStatus.QUEUED
