"""End to end with faults, on PostgreSQL + Redis with the fake Vast.ai whose instances are real ``gpu-worker serve``
processes: an instance killed mid-batch, the budget used up mid-job (with a CPU fallback, and for a cloud-only
tenant), and the orchestrator restarted mid-job with an orphan on the provider. After each: nothing bills, no
worker runs, every reservation is settled and the tenant's spend is the fake's bill."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator import budgets
from orchestrator.clock import utcnow
from orchestrator.cloud.actuator import TickReport, tick
from orchestrator.cloud.cloud_states import NOTICE_KEY
from orchestrator.cloud.reconciler import reconcile
from orchestrator.db.models import Batch, ExcludedMachine
from orchestrator.db.session import get_sessionmaker, reset_engines, session_scope
from orchestrator.enums import Backend, BatchStatus, InstanceStatus
from orchestrator.providers.base import LaunchSpec
from orchestrator.providers.vast.provider import VastProvider, make_label
from orchestrator.scheduler.model import SECONDS_PER_HOUR, Tier
from orchestrator.settings import get_settings
from orchestrator.tasks.jobs import analyze_batch
from tests.fakes.vast_server import InstanceFault
from tests.fakes.worker_hook import kill_worker
from tests.fixtures.services import OrchestratorEnv
from tests.integration.cloud_stack import (
    IDLE_TIMEOUT_S,
    World,
    assert_each_asset_has_one_result,
    assert_nothing_leaks,
    batch_backends,
    cloud_tenant,
    cloud_world,
    fake_id_of,
    instance_rows,
    run_ticks,
    two_batches,
)

BOOT_DEADLINE_S = 120.0


@pytest.fixture
def world(
    pg_redis_env: OrchestratorEnv, tiny_clip_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """PostgreSQL + Redis, the fake Vast.ai whose instances are real workers, the API, and the CPU fallback."""
    with cloud_world(tiny_clip_catalog, tmp_path, monkeypatch) as world:
        yield world


def deliver_again(batch_ids: list[uuid.UUID]) -> None:
    """Deliver the analyze messages of batches that went back to the queue (a released claim is requeued)."""
    for _ in range(3):
        with session_scope() as session:
            open_ids = [
                b.id
                for b in (session.get(Batch, i) for i in batch_ids)
                if b is not None and b.status == BatchStatus.PENDING
            ]
        for batch_id in open_ids:
            assert analyze_batch(str(batch_id)) in ("done", "claim lost")


def test_an_instance_killed_mid_batch_hands_its_batches_to_the_cpu_and_is_destroyed(world: World) -> None:
    tenant = cloud_tenant()
    upload = two_batches(world, tenant)
    run_ticks(lambda r: bool(r.became_ready), BOOT_DEADLINE_S, "the instance become ready")
    fake_id = fake_id_of(tenant.id)

    def container_dies() -> None:
        kill_worker(world.hook.processes[fake_id])
        world.fake.fault(fake_id, InstanceFault.EXITED)

    # The worker dies when it first fetches media: both batches are in flight or about to be.
    world.tap.hook = container_dies
    outcomes: dict[uuid.UUID, str] = {}
    threads = [
        threading.Thread(target=lambda b=b: outcomes.__setitem__(b, analyze_batch(str(b)))) for b in upload.batch_ids
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert world.tap.fetches >= 1
    # A batch whose claim was taken back while it ran (its instance went away) is written by its next delivery.
    assert set(outcomes) == set(upload.batch_ids) and set(outcomes.values()) <= {"done", "claim lost"}
    deliver_again(upload.batch_ids)
    assert batch_backends(upload) == [Backend.IN_PROCESS, Backend.IN_PROCESS]
    assert_each_asset_has_one_result(upload)

    run_ticks(lambda r: bool(r.destroyed), 60, "the dead instance destroyed")
    [row] = instance_rows(tenant.id)
    assert row.state == InstanceStatus.DESTROYED and row.in_flight == 0
    with session_scope() as session:
        assert session.get(ExcludedMachine, ("vast", row.machine_id)) is not None
    assert_nothing_leaks(world, tenant.id)


def lower_the_daily_cap_and_tick(tenant_id: uuid.UUID, reports: list[TickReport]) -> float:
    """Set the daily cap a tenth of a cent above today's spend, and tick once as the beat would; returns the cap."""
    settings = get_settings()
    with session_scope() as session:
        spent = budgets.summary(session, tenant_id=tenant_id, now=utcnow()).day_spent_usd
        cap = round(spent + 0.001, 6)
        budgets.set_policy(session, tenant_id=tenant_id, changes={"daily_cap_usd": cap}, now=utcnow())
    reports.append(tick(get_sessionmaker(), VastProvider.from_settings(settings), now=utcnow(), settings=settings))
    return cap


def test_a_budget_used_up_mid_job_destroys_the_instance_and_the_work_goes_on_on_the_cpu(world: World) -> None:
    tenant = cloud_tenant(tiers=["cloud", "cpu"])
    upload = two_batches(world, tenant)
    run_ticks(lambda r: bool(r.became_ready), BOOT_DEADLINE_S, "the instance become ready")
    [row] = instance_rows(tenant.id)

    reports: list[TickReport] = []
    caps: list[float] = []
    world.tap.hook = lambda: caps.append(lower_the_daily_cap_and_tick(tenant.id, reports))
    # The destroy takes the batch back from the instance: this call's CPU fallback is fenced out ("claim lost"),
    # and the requeued message runs it.
    assert analyze_batch(str(upload.batch_ids[0])) in ("done", "claim lost")
    deliver_again(upload.batch_ids[:1])

    [report] = reports
    assert report.destroyed == [row.id]
    state = report.cloud_states[str(tenant.id)]
    assert state.fallback_tier is Tier.CPU and state.blocked is not None
    assert f"daily budget of ${caps[0]:.2f} is used up" in state.blocked
    # The second batch goes to the CPU at once: no GPU is coming, so it does not wait for one.
    assert analyze_batch(str(upload.batch_ids[1])) == "done"
    assert batch_backends(upload) == [Backend.IN_PROCESS, Backend.IN_PROCESS]
    assert_each_asset_has_one_result(upload)

    assert not run_ticks(lambda r: True, 10, "a tick")[0].rented
    spent = assert_nothing_leaks(world, tenant.id)
    # Spend stays within the cap plus one tick of accrual.
    one_tick_usd = row.price_per_h_usd * get_settings().scheduler_tick_s / SECONDS_PER_HOUR
    assert spent.day_spent_usd <= caps[0] + one_tick_usd + 1e-6


def test_a_cloud_only_tenant_whose_budget_is_used_up_is_paused_with_a_notice(world: World) -> None:
    tenant = cloud_tenant(tiers=["cloud"])
    upload = two_batches(world, tenant)
    run_ticks(lambda r: bool(r.became_ready), BOOT_DEADLINE_S, "the instance become ready")
    assert analyze_batch(str(upload.batch_ids[0])) == "done"

    reports: list[TickReport] = []
    cap = lower_the_daily_cap_and_tick(tenant.id, reports)

    assert reports[0].destroyed and reports[0].cloud_states[str(tenant.id)].paused
    waiting = analyze_batch(str(upload.batch_ids[1]))
    expected = (
        f"paused: the daily budget of ${cap:.2f} is used up; "
        f"raise it with `orchestrator budget set {tenant.name} --daily-cap USD`"
    )
    assert waiting.startswith(f"waiting: {expected}")
    with httpx.Client(base_url=world.api_url, headers=tenant.headers, timeout=30) as client:
        job = client.get(f"/api/v1/jobs/{upload.job_id}").json()
    assert job["notices"][NOTICE_KEY].startswith(expected)
    with session_scope() as session:
        batch = session.get(Batch, upload.batch_ids[1])
        assert batch is not None and batch.status == BatchStatus.PENDING and batch.attempts == 0
    assert_nothing_leaks(world, tenant.id)


def test_a_restart_mid_job_rents_nothing_twice_and_destroys_the_orphan(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestrator.backends.in_process as in_process

    tenant = cloud_tenant()
    upload = two_batches(world, tenant)
    run_ticks(lambda r: bool(r.rented), 30, "a rental")
    # A labelled instance of this deployment that no row knows: a crash between a create and its commit.
    world.fake.add_offer(102, machine_id=12, gpu_name="RTX 5090", dph_base=0.60, gpu_ram_mb=32607)
    orphan_label = make_label(get_settings().cloud_deployment, str(uuid.uuid4()))
    orphan = VastProvider.from_settings(get_settings()).launch(
        "102", LaunchSpec(image="worker", label=orphan_label, disk_gb=40.0)
    )

    # The restart: new engines and sessions, new settings, a new provider client, no loaded models.
    reset_engines()
    get_settings.cache_clear()
    monkeypatch.setattr(in_process, "_executor", None)
    settings = get_settings()
    provider = VastProvider.from_settings(settings)

    passed = reconcile(get_sessionmaker(), provider, now=utcnow(), settings=settings)
    assert passed.aborted is None and passed.orphans_destroyed == [orphan.id]
    run_ticks(lambda r: bool(r.became_ready), BOOT_DEADLINE_S, "the instance become ready", provider=provider)
    for batch_id in upload.batch_ids:
        assert analyze_batch(str(batch_id)) == "done"
    assert batch_backends(upload) == [Backend.CLOUD, Backend.CLOUD]
    assert_each_asset_has_one_result(upload)
    run_ticks(lambda r: bool(r.destroyed), IDLE_TIMEOUT_S + 60, "the idle instance destroyed", provider=provider)

    assert len(instance_rows(tenant.id)) == 1
    assert len(world.fake.requests_to("PUT", "/api/v0/asks/")) == 2  # our one rental and the orphan
    assert_nothing_leaks(world, tenant.id, not_ours=(int(orphan.id),))
