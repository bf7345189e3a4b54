"""Identical bytes are stored once per tenant and analyzed once per set of analyzer options."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from gpu_worker.contract import AnalyzerOutput, BatchResult, ItemResult, TagScore
from orchestrator.batching import claim_batch, complete_batch, finalize_job, plan_batches
from orchestrator.db.models import Asset, Batch, Embedding, Result, ResultTag
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus
from orchestrator.ingest import prepare_asset
from orchestrator.storage import LocalStorage
from tests.fixtures.factories import jpeg_bytes, make_tenant
from tests.fixtures.services import OrchestratorEnv


def _submit(client: TestClient, headers: dict[str, str], data: bytes, options: dict[str, object]) -> uuid.UUID:
    job_id = uuid.UUID(client.post("/api/v1/jobs", json={"options": options}, headers=headers).json()["id"])
    answer = client.post(f"/api/v1/jobs/{job_id}/files", files=[("files", ("a.jpg", data))], headers=headers)
    assert answer.status_code == 201, answer.text
    client.post(f"/api/v1/jobs/{job_id}/seal", headers=headers)
    return job_id


def _prepare_and_plan(env: OrchestratorEnv, job_id: uuid.UUID) -> list[uuid.UUID]:
    storage = LocalStorage(env.data_dir / "media")
    with session_scope() as session:
        for asset_id in session.scalars(select(Asset.id).where(Asset.job_id == job_id)):
            prepare_asset(session, storage=storage, asset_id=asset_id, max_image_pixels=10**8)
    with session_scope() as session:
        batch_ids = plan_batches(session, job_id=job_id, batch_size=8, max_attempts=3)
    assert batch_ids is not None
    return batch_ids


def _analyze(batch_id: uuid.UUID) -> None:
    with session_scope() as session:
        claim = claim_batch(session, batch_id=batch_id, worker_id="w", lease_s=60)
        assert claim is not None
        asset_ids = session.scalars(select(Asset.id).where(Asset.batch_id == batch_id)).all()
        output = AnalyzerOutput(model_id="m", tags=[TagScore(tag="scene/beach", score=0.9)], embedding=[1.0, 0.0])
        result = BatchResult(
            batch_id=str(batch_id), items=[ItemResult(asset_id=str(a), outputs={"clip": output}) for a in asset_ids]
        )
        assert complete_batch(session, claim=claim, result=result, backend="in_process")


def test_same_bytes_in_a_later_job_reuse_the_earlier_analysis_and_share_one_stored_file(
    orch_env: OrchestratorEnv,
) -> None:
    from orchestrator.api.main import create_app

    tenant = make_tenant()
    client = TestClient(create_app())
    data = jpeg_bytes(color=(1, 2, 3))
    first = _submit(client, tenant.headers, data, {})
    (batch_id,) = _prepare_and_plan(orch_env, first)
    _analyze(batch_id)

    second = _submit(client, tenant.headers, data, {})
    assert _prepare_and_plan(orch_env, second) == [], "the duplicate must not be analyzed again"
    with session_scope() as session:
        assert finalize_job(session, job_id=second)
        reused = session.scalars(select(Asset).where(Asset.job_id == second)).one()
        assert reused.status == AssetStatus.DONE
        assert session.scalar(select(func.count()).select_from(Result).where(Result.asset_id == reused.id)) == 1
        assert session.scalars(select(ResultTag.tag).where(ResultTag.asset_id == reused.id)).all() == ["scene/beach"]
        assert session.scalar(select(func.count()).select_from(Embedding).where(Embedding.asset_id == reused.id)) == 1
        keys = set(session.scalars(select(Asset.storage_key).where(Asset.tenant_id == tenant.id)))
    assert len(keys) == 1, "identical bytes are stored once per tenant"


def test_same_bytes_with_other_options_or_another_tenant_are_analyzed_again(orch_env: OrchestratorEnv) -> None:
    from orchestrator.api.main import create_app

    tenant, other = make_tenant(), make_tenant()
    client = TestClient(create_app())
    data = jpeg_bytes(color=(4, 5, 6))
    (batch_id,) = _prepare_and_plan(orch_env, _submit(client, tenant.headers, data, {}))
    _analyze(batch_id)

    assert len(_prepare_and_plan(orch_env, _submit(client, tenant.headers, data, {"clip": {"threshold": 0.5}}))) == 1
    assert len(_prepare_and_plan(orch_env, _submit(client, other.headers, data, {}))) == 1
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 3
