"""End to end with each fault switch of the fake Vast.ai, on PostgreSQL + Redis with real ``gpu-worker serve``
processes as instances: an offer taken between search and create, a 429 storm on search, create and list, an
instance stuck in loading, an OCI error, a container that exits, an instance outbid (stopped), list calls answering
5xx, destroys answered 429, and a failed create that still made a contract. In each, the job's batches finish with
one result per asset (on a rented worker or on the CPU fallback), and afterwards nothing bills, no worker runs,
every reservation is settled and the tenant's spend is the fake's bill.

Deadlines are passed by moving the harness clock (the fake bills on it too), and retry waits are recorded by the
provider instead of slept."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator.cloud.actuator import TickReport
from orchestrator.cloud.reconciler import reconcile
from orchestrator.db.models import BudgetHold, ExcludedMachine, Instance
from orchestrator.db.session import get_sessionmaker, session_scope
from orchestrator.enums import Backend, InstanceStatus
from orchestrator.providers.vast.client import MAX_ATTEMPTS
from orchestrator.providers.vast.provider import VastProvider
from orchestrator.scheduler.model import Tier
from orchestrator.settings import get_settings
from orchestrator.tasks.jobs import analyze_batch
from tests.fakes.vast_server import InstanceFault
from tests.fakes.worker_hook import kill_worker
from tests.fixtures.services import OrchestratorEnv
from tests.integration.cloud_stack import (
    IDLE_TIMEOUT_S,
    Upload,
    World,
    assert_each_asset_has_one_result,
    assert_nothing_leaks,
    batch_backends,
    cloud_tenant,
    cloud_world,
    fake_id_of,
    instance_rows,
    recording_provider,
    run_ticks,
    tick_once,
    two_batches,
)

BOOT_WAIT_S = 120.0
BOOT_DEADLINE_S = 60.0
CREATES = ("PUT", "/api/v0/asks/")
SEARCHES = ("POST", "/api/v0/bundles/")
LISTS = ("GET", "/api/v1/instances/")


@pytest.fixture
def world(
    pg_redis_env: OrchestratorEnv, tiny_clip_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """PostgreSQL + Redis, the fake Vast.ai whose instances are real workers, the API, and the CPU fallback."""
    with cloud_world(tiny_clip_catalog, tmp_path, monkeypatch) as world:
        yield world


def ticks_until(
    world: World,
    until: Callable[[TickReport], bool],
    timeout_s: float,
    what: str,
    provider: VastProvider | None = None,
) -> list[TickReport]:
    """``run_ticks`` on the world's harness clock."""
    return run_ticks(until, timeout_s, what, provider=provider, now=world.clock.now)


def run_on_cloud_and_idle_out(world: World, upload: Upload, provider: VastProvider | None = None) -> None:
    """Once an instance is ready: both batches run on it, then it idles out (the clock passes the idle timeout)."""
    for batch_id in upload.batch_ids:
        assert analyze_batch(str(batch_id)) == "done"
    assert batch_backends(upload) == [Backend.CLOUD, Backend.CLOUD]
    assert_each_asset_has_one_result(upload)
    world.clock.advance(IDLE_TIMEOUT_S)
    ticks_until(world, lambda r: bool(r.destroyed), 30, "the idle instance destroyed", provider)


def run_on_cpu(upload: Upload, batch_ids: list[uuid.UUID] | None = None) -> None:
    """The batches (all by default) run at once on the in-process CPU fallback."""
    for batch_id in batch_ids if batch_ids is not None else upload.batch_ids:
        assert analyze_batch(str(batch_id)) == "done"


def assert_broken_and_excluded(row_id: uuid.UUID, *, machine_id: int, reason: str) -> None:
    """The row is destroyed with the container log stored and its machine excluded from later rentals."""
    with session_scope() as session:
        row = session.get(Instance, row_id)
        assert row is not None and row.state == InstanceStatus.DESTROYED
        assert row.logs is not None and "pulling" in row.logs
        assert reason in (row.last_error or "")
        assert session.get(ExcludedMachine, ("vast", machine_id)) is not None


def test_an_offer_taken_between_search_and_create_is_given_up_and_the_next_tick_rents_another(world: World) -> None:
    world.fake.add_offer(102, machine_id=12, gpu_name="RTX 4090", dph_base=0.45)
    tenant = cloud_tenant()
    upload = two_batches(world, tenant)
    world.fake.take_offers_on_create(1)

    first = tick_once()
    assert first.rented == [] and first.errors == ["offer 101 was taken; the next tick tries another"]
    [gone] = instance_rows(tenant.id)
    assert gone.state == InstanceStatus.DESTROYED and "offer gone" in (gone.last_error or "")
    assert world.fake.live_instances() == []

    run_ticks(lambda r: bool(r.became_ready), BOOT_WAIT_S, "the instance become ready")
    [instance] = world.fake.live_instances()
    assert instance.offer.id == 102
    run_on_cloud_and_idle_out(world, upload)
    assert [r.state for r in instance_rows(tenant.id)] == [InstanceStatus.DESTROYED] * 2
    assert_nothing_leaks(world, tenant.id)


def test_a_429_storm_on_search_create_and_list_is_waited_out_and_nothing_is_rented_twice(world: World) -> None:
    tenant = cloud_tenant()
    upload = two_batches(world, tenant)
    storm = MAX_ATTEMPTS - 1  # one call's retries outlast it
    for method, path in (LISTS, SEARCHES, CREATES):
        world.fake.rate_limit_from(method, path, storm, retry_after_s=2)
    sleeps: list[float] = []
    provider = recording_provider(sleeps)

    report = tick_once(provider=provider)
    assert report.aborted is None and report.errors == [] and len(report.rented) == 1
    assert sleeps == [2.0] * (3 * storm), "each storm's Retry-After was honoured"
    for method, path in (LISTS, SEARCHES, CREATES):
        assert len(world.fake.requests_to(method, path)) == storm + 1
    assert len(world.fake.instances) == 1

    run_ticks(lambda r: bool(r.became_ready), BOOT_WAIT_S, "the instance become ready", provider=provider)
    run_on_cloud_and_idle_out(world, upload, provider)
    assert_nothing_leaks(world, tenant.id)


def rent_a_stuck_instance(world: World) -> tuple[Upload, uuid.UUID, uuid.UUID]:
    """A job, a second machine on the market, and a first rental that stays in loading; returns the upload, the
    tenant and the stuck row."""
    world.fake.add_offer(102, machine_id=12, gpu_name="RTX 4090", dph_base=0.45)
    tenant = cloud_tenant(boot_deadline_s=BOOT_DEADLINE_S)
    upload = two_batches(world, tenant)
    world.fake.fault_next_instances(InstanceFault.STUCK_LOADING)
    [stuck_id] = run_ticks(lambda r: bool(r.rented), 30, "a rental")[-1].rented
    assert run_ticks(lambda r: True, 10, "a tick")[0].destroyed == [], "within its deadline it may still boot"
    return upload, tenant.id, stuck_id


def finish_on_machine_12(world: World, upload: Upload, tenant_id: uuid.UUID) -> None:
    """The replacement on machine 12 becomes ready, runs the job and idles out; nothing leaks."""
    ticks_until(world, lambda r: bool(r.became_ready), BOOT_WAIT_S, "the replacement become ready")
    assert [i.offer.machine_id for i in world.fake.live_instances()] == [12]
    run_on_cloud_and_idle_out(world, upload)
    assert_nothing_leaks(world, tenant_id)


def test_an_instance_stuck_loading_past_its_boot_deadline_is_destroyed_and_the_job_runs_on_another_machine(
    world: World,
) -> None:
    upload, tenant_id, stuck_id = rent_a_stuck_instance(world)

    world.clock.advance(BOOT_DEADLINE_S + 1)
    report = tick_once(now=world.clock.now)
    assert report.destroyed == [stuck_id]
    assert_broken_and_excluded(stuck_id, machine_id=11, reason="boot_timeout")
    finish_on_machine_12(world, upload, tenant_id)


def test_the_tick_that_destroys_a_stuck_instance_rents_its_replacement_without_a_no_offers_warning(
    world: World,
) -> None:
    upload, tenant_id, stuck_id = rent_a_stuck_instance(world)

    world.clock.advance(BOOT_DEADLINE_S + 1)
    report = tick_once(now=world.clock.now)
    assert report.destroyed == [stuck_id]
    assert report.warnings == [] and report.fallbacks == []
    assert len(report.rented) == 1
    finish_on_machine_12(world, upload, tenant_id)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [(InstanceFault.OCI_ERROR, "broken"), (InstanceFault.EXITED, "broken")],
    ids=["oci-error", "exited"],
)
def test_an_instance_whose_container_fails_to_run_is_destroyed_and_the_job_falls_back_to_the_cpu(
    world: World, fault: InstanceFault, reason: str
) -> None:
    tenant = cloud_tenant(tiers=["cloud", "cpu"])
    upload = two_batches(world, tenant)
    world.fake.fault_next_instances(fault)
    [broken_id] = run_ticks(lambda r: bool(r.rented), 30, "a rental")[-1].rented

    report = tick_once()
    assert report.destroyed == [broken_id] and report.rented == []
    assert_broken_and_excluded(broken_id, machine_id=11, reason=reason)
    # No other machine is for rent: the tenant's work goes to the CPU instead of waiting for a GPU.
    assert report.cloud_states[str(tenant.id)].fallback_tier is Tier.CPU
    run_on_cpu(upload)
    assert batch_backends(upload) == [Backend.IN_PROCESS, Backend.IN_PROCESS]
    assert_each_asset_has_one_result(upload)
    assert_nothing_leaks(world, tenant.id)


def test_an_outbid_instance_is_destroyed_not_left_stopped_and_the_rest_of_the_job_runs_on_the_cpu(
    world: World,
) -> None:
    tenant = cloud_tenant(tiers=["cloud", "cpu"])
    upload = two_batches(world, tenant)
    run_ticks(lambda r: bool(r.became_ready), BOOT_WAIT_S, "the instance become ready")
    [row] = instance_rows(tenant.id)
    assert analyze_batch(str(upload.batch_ids[0])) == "done"

    # The provider stops the container: its worker is gone and the instance bills storage only.
    fake_id = fake_id_of(tenant.id)
    kill_worker(world.hook.processes[fake_id])
    world.fake.fault(fake_id, InstanceFault.OUTBID)
    report = tick_once()
    assert report.destroyed == [row.id]
    assert_broken_and_excluded(row.id, machine_id=11, reason="broken")
    assert world.fake.instances[fake_id].destroyed, "destroyed, since a stopped instance still bills storage"

    run_on_cpu(upload, upload.batch_ids[1:])
    assert batch_backends(upload) == [Backend.CLOUD, Backend.IN_PROCESS]
    assert_each_asset_has_one_result(upload)
    assert_nothing_leaks(world, tenant.id)


def test_failed_list_calls_abort_the_tick_and_the_reconciler_without_destroying_and_the_next_tick_proceeds(
    world: World,
) -> None:
    tenant = cloud_tenant()
    upload = two_batches(world, tenant)
    sleeps: list[float] = []
    provider = recording_provider(sleeps)
    run_ticks(lambda r: bool(r.became_ready), BOOT_WAIT_S, "the instance become ready", provider=provider)
    for batch_id in upload.batch_ids:
        assert analyze_batch(str(batch_id)) == "done"
    assert batch_backends(upload) == [Backend.CLOUD, Backend.CLOUD]
    assert_each_asset_has_one_result(upload)
    [row] = instance_rows(tenant.id)

    # Idle past its timeout and past the vanish grace: a list failure read as "no instances" would destroy it or
    # mark it vanished.
    world.clock.advance(max(IDLE_TIMEOUT_S, get_settings().cloud_vanish_grace_s) + 1)
    world.fake.fail_lists(MAX_ATTEMPTS)
    aborted = tick_once(provider=provider, now=world.clock.now)
    assert aborted.aborted is not None and "list failed" in aborted.aborted
    assert aborted.destroyed == [] and aborted.rented == [] and aborted.actions == []
    world.fake.fail_lists(MAX_ATTEMPTS)
    passed = reconcile(get_sessionmaker(), provider, now=world.clock.now(), settings=get_settings())
    assert passed.aborted is not None and "list failed" in passed.aborted
    assert passed.vanished == [] and passed.orphans_destroyed == [] and passed.abandoned == []
    assert len(sleeps) == 2 * (MAX_ATTEMPTS - 1), "each list call was retried with backoff before giving up"
    assert [r.state for r in instance_rows(tenant.id)] == [InstanceStatus.READY]
    assert len(world.fake.live_instances()) == 1

    report = tick_once(provider=provider, now=world.clock.now)
    assert report.aborted is None and report.destroyed == [row.id]
    assert_nothing_leaks(world, tenant.id)


def test_destroys_answered_429_put_the_instance_in_alert_and_it_is_destroyed_when_the_provider_recovers(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    max_attempts = 2
    monkeypatch.setenv("ORCH_CLOUD_DESTROY_MAX_ATTEMPTS", str(max_attempts))
    get_settings.cache_clear()
    tenant = cloud_tenant()
    upload = two_batches(world, tenant)
    sleeps: list[float] = []
    provider = recording_provider(sleeps)
    run_ticks(lambda r: bool(r.became_ready), BOOT_WAIT_S, "the instance become ready", provider=provider)
    for batch_id in upload.batch_ids:
        assert analyze_batch(str(batch_id)) == "done"
    assert batch_backends(upload) == [Backend.CLOUD, Backend.CLOUD]
    assert_each_asset_has_one_result(upload)
    [row] = instance_rows(tenant.id)

    world.clock.advance(IDLE_TIMEOUT_S)
    world.fake.rate_limit_destroys(max_attempts * MAX_ATTEMPTS)  # every retry of two destroy calls
    first = tick_once(provider=provider, now=world.clock.now)
    assert first.destroyed == [] and first.alerts == []
    second = tick_once(provider=provider, now=world.clock.now)
    assert second.destroyed == [] and second.alerts == [row.id]
    with session_scope() as session:
        stuck = session.get(Instance, row.id)
        assert stuck is not None and stuck.state == InstanceStatus.ALERT and stuck.destroy_attempts == max_attempts
        assert session.get(BudgetHold, str(row.id)) is not None, "still billing, so still charged"
    assert len(world.fake.live_instances()) == 1 and world.hook.alive() != []

    recovered = tick_once(provider=provider, now=world.clock.now)
    assert recovered.destroyed == [row.id] and recovered.alerts == []
    [done] = instance_rows(tenant.id)
    assert done.state == InstanceStatus.DESTROYED, "the row does not stay in alert once the destroy went through"
    assert_nothing_leaks(world, tenant.id)


def test_a_create_that_failed_after_making_a_contract_is_destroyed_settled_and_the_next_tick_rents_again(
    world: World,
) -> None:
    tenant = cloud_tenant()
    upload = two_batches(world, tenant)
    world.fake.fail_creates_after_contract(1)

    first = tick_once()
    assert first.rented == [] and len(first.errors) == 1 and "create on offer 101 failed" in first.errors[0]
    [failed] = instance_rows(tenant.id)
    assert failed.state == InstanceStatus.DESTROYING and failed.provider_instance_id is not None
    assert "create failed after a contract" in (failed.last_error or "")
    assert world.fake.live_instances() == [], "the provider client destroyed the contract at once"

    reports = run_ticks(lambda r: bool(r.became_ready), BOOT_WAIT_S, "the instance become ready")
    assert reports[0].destroyed == [failed.id] and len(reports[0].rented) == 1
    with session_scope() as session:
        settled = session.get(Instance, failed.id)
        assert settled is not None and settled.state == InstanceStatus.DESTROYED
        assert session.scalars(select(BudgetHold).where(BudgetHold.instance_id == str(failed.id))).all() == []
    run_on_cloud_and_idle_out(world, upload)
    assert len(world.fake.requests_to(*CREATES)) == 2
    assert_nothing_leaks(world, tenant.id)
