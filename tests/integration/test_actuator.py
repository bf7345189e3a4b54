"""The scheduler's actuator against the fake Vast.ai on real HTTP: reservation before create, readiness over pinned
TLS, idle teardown settled to the fake's bill, and every fault switch — with no instance left billing afterwards."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from orchestrator import budgets
from orchestrator.cloud.instances import acquire_slot, mark_failed, ready_instances, release_slot
from orchestrator.db.models import (
    Batch,
    BudgetHold,
    ExcludedMachine,
    Instance,
    LedgerEntry,
    SchedulerEvent,
    TenantBudget,
)
from orchestrator.db.session import session_scope
from orchestrator.enums import BatchStatus, InstanceStatus
from orchestrator.scheduler import ledger
from tests.fakes.vast_server import FakeInstance, InstanceFault
from tests.fixtures.cloud_harness import T0, CloudHarness, add_pending_batch, finish_batch
from tests.fixtures.factories import make_tenant

POLICY: dict[str, Any] = {
    "daily_cap_usd": 10,
    "monthly_cap_usd": 100,
    "soft_cap_usd": 80,
    "scale_up_wait_s": 0,
    "idle_timeout_s": 120,
    "boot_deadline_s": 300,
    "max_instances": 2,
}


def _tenant(policy: dict[str, Any] | None = None) -> uuid.UUID:
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes={**POLICY, **(policy or {})}, now=T0)
    return tenant.id


def _rows() -> list[Instance]:
    with session_scope() as session:
        return list(session.scalars(select(Instance).order_by(Instance.created_at)))


def _spent_usd(tenant_id: uuid.UUID) -> float:
    with session_scope() as session:
        row = session.get(TenantBudget, tenant_id)
        assert row is not None
        return ledger.musd_to_usd(row.total_spent_musd)


def _drain(h: CloudHarness) -> None:
    """Finish all work, let every instance idle out, and assert that nothing is left billing or held."""
    with session_scope() as session:
        for batch in session.scalars(select(Batch).where(Batch.status != BatchStatus.DONE)):
            batch.status = BatchStatus.DONE
    for _ in range(5):
        h.clock.t += 200
        h.tick()
    assert h.fake.live_instances() == []
    with session_scope() as session:
        assert session.scalars(select(BudgetHold)).all() == []
        live = [r for r in session.scalars(select(Instance)) if r.state not in ("destroyed", "vanished")]
        assert live == []


def _assert_ledger_sums(tenant_id: uuid.UUID) -> None:
    with session_scope() as session:
        entries = session.scalars(select(LedgerEntry).where(LedgerEntry.tenant_id == tenant_id)).all()
        row = session.get(TenantBudget, tenant_id)
        assert row is not None
        assert sum(e.amount_musd for e in entries if e.kind == "accrue") == row.total_spent_musd


def test_pending_work_rents_after_reserving_then_becomes_ready_idles_out_and_settles_to_the_fake_bill(
    cloud_sqlite: CloudHarness,
) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    seen_at_create: list[tuple[str, bool]] = []
    responders_create = h.fake.on_create
    assert responders_create is not None

    def check_row_first(instance: FakeInstance) -> Any:
        with session_scope() as session:
            row = session.scalars(select(Instance).where(Instance.label == instance.label)).one()
            seen_at_create.append((str(row.state), session.get(BudgetHold, str(row.id)) is not None))
        return responders_create(instance)

    h.fake.on_create = check_row_first
    batch_id = add_pending_batch(tenant_id, assets=8, created_at=T0)

    first = h.tick()
    assert len(first.rented) == 1 and first.aborted is None
    assert seen_at_create == [("requested", True)], "row and reservation were committed before the create call"
    (row,) = _rows()
    assert row.state == InstanceStatus.BOOTING and row.offer_id == "101", "the best images per dollar (4090)"
    (created,) = h.fake.live_instances()
    assert created.label == row.label and created.label.startswith("mam-test-")
    assert set(k for k in created.env if not k.startswith("-p")) == {
        "GPUW_TOKEN",
        "GPUW_TLS_CERT_PEM",
        "GPUW_TLS_KEY_PEM",
        "GPUW_SERVE_ANALYZERS",
        "GPUW_SERVE_HOST",
        "GPUW_SERVE_PORT",
    }, "the instance gets its own token and TLS pair and no other secret"
    assert h.fake.api_key not in str(created.env) and "sqlite" not in str(created.env)
    assert created.env["GPUW_TLS_CERT_PEM"] == row.tls_cert_pem and created.env["GPUW_TOKEN"] == row.worker_token

    h.clock.t = 10
    assert h.tick().became_ready == [], "still loading"
    h.clock.t = 40
    assert h.tick().became_ready == [row.id]
    with session_scope() as session:
        (ready,) = ready_instances(session, tenant_id=tenant_id)
        assert ready.worker_url is not None and ready.worker_url.startswith("https://127.0.0.1:")
        assert acquire_slot(session, instance_id=ready.id) and acquire_slot(session, instance_id=ready.id)
        assert not acquire_slot(session, instance_id=ready.id), "two batches in flight at most"
    h.clock.t = 60
    finish_batch(batch_id, at=h.clock.now())
    with session_scope() as session:
        release_slot(session, instance_id=row.id, busy_at=h.clock.now())
        release_slot(session, instance_id=row.id, busy_at=h.clock.now())

    h.clock.t = 170
    assert h.tick().destroyed == [], "idle for 110 s of 120"
    h.clock.t = 185
    report = h.tick()
    assert report.destroyed == [row.id]
    assert h.fake.live_instances() == []
    assert abs(_spent_usd(tenant_id) - h.fake.spent_usd) <= 1e-6
    _assert_ledger_sums(tenant_id)
    _drain(h)


def test_an_offer_taken_between_search_and_create_releases_the_reservation_and_the_next_tick_rents_another(
    cloud_sqlite: CloudHarness,
) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    add_pending_batch(tenant_id, assets=4, created_at=T0)
    h.fake.take_offers_on_create(1)
    first = h.tick()
    assert first.rented == [] and h.fake.live_instances() == []
    (gone,) = _rows()
    assert gone.state == InstanceStatus.DESTROYED and "offer gone" in (gone.last_error or "")
    assert _spent_usd(tenant_id) == 0.0
    h.clock.t = 5
    second = h.tick()
    assert len(second.rented) == 1
    (instance,) = h.fake.live_instances()
    assert instance.offer.id == 102
    _drain(h)


def test_a_429_storm_is_waited_out_and_the_rental_goes_through(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    add_pending_batch(tenant_id, assets=4, created_at=T0)
    h.fake.rate_limit(3, retry_after_s=2)
    report = h.tick()
    assert len(report.rented) == 1 and report.aborted is None
    assert h.sleeps[:3] == [2.0, 2.0, 2.0], "Retry-After was honoured"
    _drain(h)


@pytest.mark.parametrize(
    ("fault", "when_s", "reason"),
    [
        (InstanceFault.STUCK_LOADING, 310, "boot_timeout"),
        (InstanceFault.OCI_ERROR, 10, "broken"),
        (InstanceFault.EXITED, 40, "broken"),
        (InstanceFault.OUTBID, 10, "broken"),
    ],
)
def test_a_broken_instance_has_its_logs_stored_is_destroyed_and_its_machine_excluded(
    cloud_sqlite: CloudHarness, fault: InstanceFault, when_s: float, reason: str
) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    add_pending_batch(tenant_id, assets=4, created_at=T0)
    h.fake.fault_next_instances(fault)
    h.tick()
    (first,) = _rows()
    h.clock.t = when_s
    report = h.tick()
    assert first.id in report.destroyed
    with session_scope() as session:
        row = session.get(Instance, first.id)
        assert row is not None and row.state == InstanceStatus.DESTROYED
        assert row.logs is not None and "pulling" in row.logs
        assert reason in (row.last_error or "")
        assert [m.machine_id for m in session.scalars(select(ExcludedMachine))] == [11]
    assert len(report.rented) == 1, "the same tick rents again, on another machine"
    assert [i.offer.machine_id for i in h.fake.live_instances()] == [12]
    _drain(h)


def test_a_worker_that_fails_its_start_up_self_check_is_destroyed_at_once_not_at_the_boot_deadline(
    cloud_sqlite: CloudHarness,
) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    add_pending_batch(tenant_id, assets=4, created_at=T0)
    h.responders.start_failure = {"gpu": "this torch build does not support sm_120 (NVIDIA GeForce RTX 5090)"}
    h.tick()
    (first,) = _rows()
    h.clock.t = 40  # far inside the 300 s boot deadline
    report = h.tick()
    assert report.failed_boots == [first.id]
    assert first.id in report.destroyed
    with session_scope() as session:
        row = session.get(Instance, first.id)
        assert row is not None and row.state == InstanceStatus.DESTROYED
        assert "sm_120" in (row.last_error or "")
        assert [m.machine_id for m in session.scalars(select(ExcludedMachine))] == [11]
    h.responders.start_failure = None
    _drain(h)


def test_a_failed_list_call_aborts_the_tick_without_destroying_or_renting(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    batch_id = add_pending_batch(tenant_id, assets=4, created_at=T0)
    h.tick()
    h.clock.t = 40
    h.tick()
    finish_batch(batch_id, at=h.clock.now())
    h.clock.t = 400
    h.fake.fail_lists(50)
    report = h.tick()
    assert report.aborted is not None and "list failed" in report.aborted
    assert report.destroyed == [] and report.rented == []
    assert len(h.fake.live_instances()) == 1
    h.fake.fail_lists(0)
    h.fake._list_failures = 0  # the storm ends
    _drain(h)


def test_a_destroy_answered_429_is_retried_turns_to_alert_and_finishes_when_the_provider_recovers(
    cloud_sqlite: CloudHarness,
) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    batch_id = add_pending_batch(tenant_id, assets=4, created_at=T0)
    h.tick()
    (row,) = _rows()
    h.clock.t = 40
    h.tick()
    finish_batch(batch_id, at=h.clock.now())
    h.fake.rate_limit_destroys(1000)
    for n in range(3):
        h.clock.t = 200 + 5 * n
        h.tick()
    with session_scope() as session:
        stuck = session.get(Instance, row.id)
        assert stuck is not None and stuck.state == InstanceStatus.ALERT and stuck.destroy_attempts == 3
        assert session.get(BudgetHold, str(row.id)) is not None, "still billing, so still charged"
    assert len(h.fake.live_instances()) == 1
    h.fake._destroy_rate_limited = 1  # one more 429, then the provider recovers
    h.clock.t = 230
    report = h.tick()
    assert report.destroyed == [row.id] and h.fake.live_instances() == []
    assert abs(_spent_usd(tenant_id) - h.fake.spent_usd) <= 1e-6
    _drain(h)


def test_a_backend_marked_failure_is_destroyed_next_tick_and_its_machine_excluded(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    add_pending_batch(tenant_id, assets=4, created_at=T0)
    h.tick()
    h.clock.t = 40
    h.tick()
    (row,) = _rows()
    with session_scope() as session:
        assert mark_failed(session, instance_id=row.id, reason="analyze: connection reset")
    h.clock.t = 45
    report = h.tick()
    assert row.id in report.destroyed
    with session_scope() as session:
        assert [m.machine_id for m in session.scalars(select(ExcludedMachine))] == [11]
    _drain(h)


def test_budget_exhausted_destroys_the_instance_and_spend_stays_within_one_tick_of_the_cap(
    cloud_pg: CloudHarness,
) -> None:
    h = cloud_pg
    # 0.358 $/h: a 0.05 $ day is about 8 minutes; the 600 s reservation (0.06 $) would not fit, so keep it short.
    tenant_id = _tenant({"daily_cap_usd": 0.05, "min_runtime_s": 60})
    add_pending_batch(tenant_id, assets=20, created_at=T0)
    h.tick()
    assert len(h.fake.live_instances()) == 1
    h.clock.t = 450  # about 0.045 $ of the 0.05 $ day; from here the beat ticks every 5 s
    assert h.tick().destroyed == []
    destroyed_at = None
    while h.clock.t < 700 and destroyed_at is None:
        h.clock.t += 5
        if h.tick().destroyed:
            destroyed_at = h.clock.t
    assert destroyed_at is not None, "the hard cap destroyed the instance"
    assert h.fake.live_instances() == []
    one_tick_usd = 0.36 * 5 / 3600
    assert _spent_usd(tenant_id) <= 0.05 + one_tick_usd
    assert abs(_spent_usd(tenant_id) - h.fake.spent_usd) <= 1e-6
    h.clock.t += 5
    assert h.tick().rented == [], "no new rental past the cap"
    _assert_ledger_sums(tenant_id)
    _drain(h)


def test_a_restarted_orchestrator_rents_nothing_twice(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    tenant_id = _tenant({"max_instances": 1})
    add_pending_batch(tenant_id, assets=4, created_at=T0)
    h.tick()
    h.provider = h.restarted_provider()
    for t in (5, 10, 40, 45):
        h.clock.t = t
        h.tick()
    assert len(h.fake.instances) == 1, "one rental in all"
    assert [r.state for r in _rows()] == [InstanceStatus.READY]
    _ = timedelta
    _drain(h)


def _events(tenant_id: uuid.UUID) -> list[tuple[str, str, str | None]]:
    with session_scope() as session:
        rows = session.scalars(
            select(SchedulerEvent).where(SchedulerEvent.tenant_id == tenant_id).order_by(SchedulerEvent.id)
        )
        return [(e.kind, e.reason, e.instance_id) for e in rows]


def test_each_tick_records_why_it_rented_waited_and_destroyed_once_per_change(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    tenant_id = _tenant({"max_instances": 1})
    batch_id = add_pending_batch(tenant_id, assets=8, created_at=T0)

    h.tick()
    (row,) = _rows()
    for t in (5, 10, 15):
        h.clock.t = t
        h.tick()
    assert _events(tenant_id) == [("rent", "waiting", str(row.id)), ("hold", "max_instances", None)], (
        "the rental names its instance; four ticks at the limit write one row"
    )

    h.clock.t = 40
    h.tick()
    finish_batch(batch_id, at=h.clock.now())
    h.clock.t = 300
    h.tick()
    assert _events(tenant_id)[-1] == ("destroy", "idle", str(row.id))
    with session_scope() as session:
        messages = [e.message for e in session.scalars(select(SchedulerEvent).order_by(SchedulerEvent.id))]
    assert "rented a RTX 4090" in messages[0] and "idle timeout of 120 s" in messages[-1]
    _drain(h)


def test_events_older_than_thirty_days_are_deleted_by_a_later_tick(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    with session_scope() as session:
        session.add(SchedulerEvent(tenant_id=tenant_id, at=h.clock.now() - timedelta(days=31), kind="wait", reason="x"))
        session.add(SchedulerEvent(tenant_id=tenant_id, at=h.clock.now() - timedelta(days=29), kind="wait", reason="y"))
    add_pending_batch(tenant_id, assets=4, created_at=T0)

    h.tick()

    assert [reason for _, reason, _ in _events(tenant_id)] == ["y", "waiting"]
    _drain(h)
