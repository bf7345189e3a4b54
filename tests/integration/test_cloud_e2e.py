"""End to end on PostgreSQL + Redis with the fake Vast.ai: a job arrives, a scheduler tick rents, the instance's
real worker boots (``gpu-worker serve`` over TLS, tiny CLIP, CPU), the batches run on it, it idles out and is
destroyed, and the tenant's spend matches the fake's bill. No worker process outlives the test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator import budgets
from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Batch, Tenant
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, Backend, BatchStatus, InstanceStatus
from orchestrator.tasks.jobs import analyze_batch
from tests.fixtures.factories import make_tenant
from tests.fixtures.services import OrchestratorEnv
from tests.integration.cloud_stack import (
    World,
    assert_nothing_leaks,
    cloud_world,
    instance_rows,
    jpeg,
    run_ticks,
    upload_and_plan,
)

IDLE_TIMEOUT_S = 3.0
BOOT_DEADLINE_S = 120.0


@pytest.fixture
def world(
    pg_redis_env: OrchestratorEnv, tiny_clip_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """PostgreSQL + Redis, the fake Vast.ai whose instances are real workers, and the API in a thread."""
    with cloud_world(tiny_clip_catalog, tmp_path, monkeypatch) as world:
        yield world


def test_a_job_rents_an_instance_runs_on_it_idles_out_and_the_spend_matches_the_bill(world: World) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        assert session.get(Tenant, tenant.id) is not None
        budgets.set_policy(
            session,
            tenant_id=tenant.id,
            changes={
                "scale_up_threshold_gpu_s": 0.0,
                "scale_up_wait_s": 0.0,
                "idle_timeout_s": IDLE_TIMEOUT_S,
                "max_instances": 1,
            },
            now=utcnow(),
        )
    files = {f"{i}.jpg": jpeg("red" if i % 2 else "blue", "square" if i % 2 else "circle", i) for i in range(4)}
    upload = upload_and_plan(world.api_url, tenant, files, batch_size=2)
    assert len(upload.batch_ids) == 2

    # While the instance boots, the batches wait for it rather than run on the CPU.
    assert analyze_batch(str(upload.batch_ids[0])).startswith("waiting: waiting for a cloud GPU")

    run_ticks(lambda r: bool(r.became_ready), BOOT_DEADLINE_S, "the instance become ready")
    [row] = instance_rows(tenant.id)
    assert row.state == InstanceStatus.READY and row.worker_url and row.worker_url.startswith("https://")
    [fake_instance] = world.fake.live_instances()
    assert fake_instance.env["GPUW_TOKEN"] == row.worker_token
    assert not any(key.startswith("ORCH_") for key in fake_instance.env)  # nothing of ours leaves the VPS
    assert world.fake.api_key not in json.dumps(fake_instance.env)

    for batch_id in upload.batch_ids:
        assert analyze_batch(str(batch_id)) == "done"
    with session_scope() as session:
        for batch_id in upload.batch_ids:
            batch = session.get(Batch, batch_id)
            assert batch is not None and batch.status == BatchStatus.DONE and batch.backend == Backend.CLOUD
        statuses = {a.status for a in session.scalars(select(Asset).where(Asset.job_id == upload.job_id))}
        assert statuses == {AssetStatus.DONE}

    run_ticks(lambda r: bool(r.destroyed), IDLE_TIMEOUT_S + 60, "the idle instance destroyed")
    [row] = instance_rows(tenant.id)
    assert row.state == InstanceStatus.DESTROYED
    assert world.fake.spent_usd > 0
    # Our accrual runs from the reservation (just before the create) to the settlement (just after the destroy):
    # the same seconds as the fake's bill, give or take one tick.
    assert_nothing_leaks(world, tenant.id)
