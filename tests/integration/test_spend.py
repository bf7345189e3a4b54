"""The live spend view and its REST routes: spend against the caps, spend per hour and per day from the ledger, the
instances billing now with their cost so far, and every tenant's spend for the operator — on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from orchestrator import budgets
from orchestrator.api.main import create_app
from orchestrator.clock import utcnow
from orchestrator.db.models import SchedulerEvent, TenantBudget
from orchestrator.db.session import session_scope
from orchestrator.enums import InstanceStatus
from orchestrator.scheduler import ledger
from orchestrator.spend import DAYS_SHOWN, HOURS_SHOWN, Bucket, instances_now, spend_series, tenant_spend
from tests.fixtures.factories import TenantWithKey, make_billed_instance, make_tenant
from tests.fixtures.services import OrchestratorEnv

pytestmark = pytest.mark.integration

POLICY = {"daily_cap_usd": 50, "monthly_cap_usd": 500, "soft_cap_usd": 400}


def _hour(now: datetime) -> datetime:
    return now.replace(minute=0, second=0, microsecond=0)


def _budgeted_tenant() -> TenantWithKey:
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes=POLICY, now=utcnow() - timedelta(days=10))
    return tenant


def _run(tenant_id: uuid.UUID, *, start: datetime, price_per_h_usd: float, accrue_at: list[datetime]) -> str:
    """An instance billed from ``start``, charged at each of ``accrue_at`` and settled at the last one."""
    instance_id = f"i-{uuid.uuid4().hex[:8]}"
    with session_scope() as session:
        budgets.reserve(
            session,
            tenant_id=tenant_id,
            instance_id=instance_id,
            price_per_h_usd=price_per_h_usd,
            amount_usd=0.01,
            now=start,
        )
    for at in accrue_at[:-1]:
        with session_scope() as session:
            budgets.accrue(session, tenant_id=tenant_id, now=at)
    with session_scope() as session:
        budgets.settle(session, tenant_id=tenant_id, instance_id=instance_id, now=accrue_at[-1])
    return instance_id


def test_spend_per_hour_and_per_day_adds_up_to_what_was_charged(orch_env: OrchestratorEnv) -> None:
    tenant, other = _budgeted_tenant(), _budgeted_tenant()
    now = utcnow()
    old = now - timedelta(days=5)
    _run(tenant.id, start=old, price_per_h_usd=1.0, accrue_at=[old + timedelta(hours=2)])
    start = _hour(now) - timedelta(hours=3) + timedelta(minutes=30)
    _run(
        tenant.id,
        start=start,
        price_per_h_usd=2.0,
        accrue_at=[start + timedelta(hours=1), start + timedelta(hours=1.5)],
    )
    _run(other.id, start=start, price_per_h_usd=10.0, accrue_at=[start + timedelta(hours=1)])

    with session_scope() as session:
        hourly = spend_series(session, now=now, bucket=Bucket.HOUR, tenant_id=tenant.id)
        daily = spend_series(session, now=now, bucket=Bucket.DAY, tenant_id=tenant.id)
        everyone = spend_series(session, now=now, bucket=Bucket.DAY)
        total = ledger.musd_to_usd(session.get(TenantBudget, tenant.id).total_spent_musd)  # type: ignore[union-attr]

    assert len(hourly) == HOURS_SHOWN and hourly[-1].start == _hour(now)
    assert [p.start for p in hourly] == sorted(p.start for p in hourly)
    by_hour = {p.start: p.usd for p in hourly}
    assert by_hour[_hour(now) - timedelta(hours=2)] == pytest.approx(2.0)
    assert by_hour[_hour(now) - timedelta(hours=1)] == pytest.approx(1.0)
    assert sum(by_hour.values()) == pytest.approx(3.0), "the 5-day-old run is outside the 48 hours"
    assert len(daily) == DAYS_SHOWN and daily[-1].start == _hour(now).replace(hour=0)
    assert sum(p.usd for p in daily) == pytest.approx(total) == pytest.approx(5.0)
    assert {p.start: p.usd for p in daily}[
        (old + timedelta(hours=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    ] >= 2.0
    assert sum(p.usd for p in everyone) == pytest.approx(15.0), "the operator's series counts every tenant"


def test_instances_running_now_show_their_cost_so_far_and_alerts_come_first(orch_env: OrchestratorEnv) -> None:
    tenant, other = _budgeted_tenant(), _budgeted_tenant()
    now = utcnow()
    ready = make_billed_instance(
        tenant.id, state=InstanceStatus.READY, started=now - timedelta(minutes=30), price_per_h_usd=1.2
    )
    alert = make_billed_instance(
        other.id, state=InstanceStatus.ALERT, started=now - timedelta(minutes=10), price_per_h_usd=0.6
    )

    with session_scope() as session:
        mine = instances_now(session, now=now, tenant_id=tenant.id)
        everyone = instances_now(session, now=now)

    assert [i.id for i in mine] == [ready]
    (inst,) = mine
    assert inst.cost_usd == pytest.approx(0.6, abs=1e-6) and inst.uptime_s == pytest.approx(1800, abs=1)
    assert inst.gpu_name == "RTX 4090" and inst.price_per_h_usd == pytest.approx(1.2)
    assert [i.id for i in everyone] == [alert, ready]
    assert everyone[0].alert and everyone[0].tenant_name == other.name


def test_the_spend_view_compares_today_and_the_month_with_the_caps_without_writing(orch_env: OrchestratorEnv) -> None:
    tenant = _budgeted_tenant()
    now = utcnow()
    # Started at most an hour ago and today (UTC), priced so that it has cost $5 by now.
    started = max(now - timedelta(hours=1), now.replace(hour=0, minute=0, second=0, microsecond=0))
    hours = max((now - started).total_seconds(), 1.0) / 3600
    make_billed_instance(
        tenant.id, state=InstanceStatus.READY, started=now - timedelta(hours=hours), price_per_h_usd=5.0 / hours
    )
    with session_scope() as session:
        version = session.get(TenantBudget, tenant.id).version  # type: ignore[union-attr]
        view = tenant_spend(session, tenant_id=tenant.id, now=now)

    assert view.day.spent_usd == pytest.approx(5.0, abs=1e-3) and view.day.cap_usd == 50
    assert view.day.percent == 10 and not view.day.reached
    assert view.month.cap_usd == 500 and view.soft.cap_usd == 400
    with session_scope() as session:
        assert session.get(TenantBudget, tenant.id).version == version, "no lock taken, nothing written"  # type: ignore[union-attr]


def test_the_spend_view_of_a_tenant_without_a_budget_does_not_create_one(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        view = tenant_spend(session, tenant_id=tenant.id, now=utcnow())
        assert not view.summary.configured and view.day.spent_usd == 0
    with session_scope() as session:
        assert session.get(TenantBudget, tenant.id) is None, "a budget would let the scheduler rent for it"


def test_rest_spend_gives_the_tenant_its_own_view_only(orch_env: OrchestratorEnv) -> None:
    tenant, other = _budgeted_tenant(), _budgeted_tenant()
    now = utcnow()
    make_billed_instance(other.id, state=InstanceStatus.READY, started=now - timedelta(minutes=5), price_per_h_usd=1.0)
    with session_scope() as session:
        session.add(SchedulerEvent(tenant_id=tenant.id, at=now, kind="wait", reason="below_threshold", message="m"))
        session.add(SchedulerEvent(tenant_id=other.id, at=now, kind="rent", reason="backlog", message="theirs"))
    client = TestClient(create_app())

    answer = client.get("/api/v1/spend", headers=tenant.headers)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["today"]["cap_usd"] == 50 and body["month"]["cap_usd"] == 500 and body["soft_cap"]["cap_usd"] == 400
    assert len(body["hourly"]) == HOURS_SHOWN and len(body["daily"]) == DAYS_SHOWN
    assert body["instances"] == [], "another tenant's instance is not shown"
    assert [(e["kind"], e["reason"]) for e in body["events"]] == [("wait", "below_threshold")]
    assert client.get("/api/v1/spend").status_code == 401


def test_admin_routes_list_every_tenants_spend_and_every_instance_alerts_first(orch_env: OrchestratorEnv) -> None:
    tenant, other = _budgeted_tenant(), _budgeted_tenant()
    now = utcnow()
    ready = make_billed_instance(
        tenant.id, state=InstanceStatus.READY, started=now - timedelta(minutes=30), price_per_h_usd=1.2
    )
    alert = make_billed_instance(
        other.id, state=InstanceStatus.ALERT, started=now - timedelta(minutes=10), price_per_h_usd=0.6
    )
    client = TestClient(create_app())
    admin = {"Authorization": f"Bearer {orch_env.admin_token}"}

    spend = client.get("/api/v1/admin/spend", headers=admin)
    instances = client.get("/api/v1/admin/instances", headers=admin)

    assert spend.status_code == 200, spend.text
    rows = {r["name"]: r for r in spend.json()["data"]}
    # Accrued up to the request: 30 min at $1.2/h, give or take the seconds a loaded machine takes to get there.
    assert rows[tenant.name]["total_spent_usd"] == pytest.approx(0.6, abs=0.01)
    assert rows[tenant.name]["today"]["cap_usd"] == 50
    assert rows[tenant.name]["live_instances"] == 1 and rows[tenant.name]["active_keys"] == 1
    assert [(i["id"], i["alert"]) for i in instances.json()["data"]] == [(str(alert), True), (str(ready), False)]
    assert client.get("/api/v1/admin/instances", headers=tenant.headers).status_code == 403


def test_spend_buckets_are_utc_whatever_the_database_session_zone(orch_env: OrchestratorEnv) -> None:
    tenant = _budgeted_tenant()
    now = utcnow()
    start = _hour(now) - timedelta(hours=5) + timedelta(minutes=10)
    _run(tenant.id, start=start, price_per_h_usd=6.0, accrue_at=[start + timedelta(minutes=20)])
    with session_scope() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SET TIME ZONE 'America/New_York'"))
        hourly = spend_series(session, now=now, bucket=Bucket.HOUR, tenant_id=tenant.id)
    assert {p.start: p.usd for p in hourly}[_hour(now) - timedelta(hours=5)] == pytest.approx(2.0)
    assert all(p.start.tzinfo is UTC for p in hourly)
