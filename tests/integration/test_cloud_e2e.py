"""End to end on PostgreSQL + Redis with the fake Vast.ai: a job arrives, a scheduler tick rents, the instance's
real worker boots (``gpu-worker serve`` over TLS, tiny CLIP, CPU), the batches run on it, it idles out and is
destroyed, and the tenant's spend matches the fake's bill. No worker process outlives the test."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator import budgets
from orchestrator.clock import utcnow
from orchestrator.cloud.actuator import TickReport, tick
from orchestrator.db.models import Asset, Batch, Instance, Tenant
from orchestrator.db.session import get_sessionmaker, session_scope
from orchestrator.enums import AssetStatus, Backend, BatchStatus, InstanceStatus
from orchestrator.providers.vast.provider import VastProvider
from orchestrator.settings import get_settings
from orchestrator.tasks.jobs import analyze_batch
from tests.fakes.vast_server import FakeVast
from tests.fakes.worker_hook import RealWorkerHook, free_port
from tests.fixtures.factories import make_tenant
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.tiny_models import TINY_CLIP_ID
from tests.integration.cloud_stack import MediaTap, jpeg, serve_api, upload_and_plan

SECRET = "cloud-e2e-test-secret-0123456789abcdef0123"
IDLE_TIMEOUT_S = 3.0
BOOT_DEADLINE_S = 120.0
TICK_INTERVAL_S = 0.5


@dataclass
class World:
    """The running fake market with its real-worker hook, and the API that serves the media."""

    fake: FakeVast
    hook: RealWorkerHook
    api_url: str


@pytest.fixture
def world(
    pg_redis_env: OrchestratorEnv, tiny_clip_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """PostgreSQL + Redis, the fake Vast.ai whose instances are real workers, and the API in a thread."""
    model_env = {
        "GPUW_CATALOG_PATHS": json.dumps([str(tiny_clip_catalog)]),
        "GPUW_CLIP_MODEL": TINY_CLIP_ID,
        "GPUW_DEVICE": "cpu",
        "GPUW_MODELS_DIR": str(tmp_path / "worker-models"),
    }
    hook = RealWorkerHook(model_env=model_env, log_dir=tmp_path)
    fake = FakeVast(on_create=hook.on_create, on_destroy=hook.on_destroy)
    fake.add_offer(101, machine_id=11, gpu_name="RTX 4090", dph_base=0.35)
    api_port = free_port()
    with fake.serve():
        for key, value in {
            "ORCH_SECRET_KEY": SECRET,
            "ORCH_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
            "ORCH_VAST_API_URL": fake.url,
            "ORCH_VAST_API_KEY": fake.api_key,
            "ORCH_CLOUD_WORKER_TIMEOUT_S": "60",
        }.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        try:
            with serve_api(api_port, MediaTap()) as api_url:
                yield World(fake, hook, api_url)
        finally:
            for instance_id in hook.alive():
                print(f"--- instance {instance_id} worker log ---\n{hook.log(instance_id)[-3000:]}")
    assert hook.alive() == [], "a worker process outlived the test"


def run_ticks(until: Callable[[TickReport], bool], timeout_s: float, what: str) -> list[TickReport]:
    """Tick the scheduler as the beat would until ``until`` holds for a tick's report."""
    settings = get_settings()
    provider = VastProvider.from_settings(settings)
    reports: list[TickReport] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        report = tick(get_sessionmaker(), provider, now=utcnow(), settings=settings)
        reports.append(report)
        assert report.aborted is None and not report.errors, report
        if until(report):
            return reports
        time.sleep(TICK_INTERVAL_S)
    raise TimeoutError(f"no tick saw {what} in {timeout_s}s; last report: {reports[-1] if reports else None}")


def instance_rows(tenant_id: uuid.UUID) -> list[Instance]:
    with session_scope() as session:
        rows = list(session.scalars(select(Instance).where(Instance.tenant_id == tenant_id)))
        for row in rows:
            session.expunge(row)
        return rows


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
    assert world.fake.live_instances() == []
    assert world.hook.alive() == []

    with session_scope() as session:
        spent = budgets.summary(session, tenant_id=tenant.id, now=utcnow())
    billed = world.fake.spent_usd
    assert billed > 0
    # Our accrual runs from the reservation (just before the create) to the settlement (just after the destroy):
    # the same seconds as the fake's bill, give or take one tick.
    assert spent.total_spent_usd == pytest.approx(billed, abs=row.price_per_h_usd * 2 * TICK_INTERVAL_S / 3600 + 1e-5)
    assert spent.reserved_usd == 0 and spent.live_instances == 0
