"""Tenants' money in the database: reservations before rentals, per-second accrual, settlement, and caps that two
concurrent scheduler ticks cannot both spend past — on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from orchestrator import budgets
from orchestrator.cli import app
from orchestrator.db.models import BudgetHold, LedgerEntry, TenantBudget
from orchestrator.db.session import session_scope
from orchestrator.scheduler.ledger import ReservationRefusedError
from tests.fixtures.factories import make_tenant
from tests.fixtures.services import OrchestratorEnv

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
CAPS = {"daily_cap_usd": 10, "monthly_cap_usd": 100, "soft_cap_usd": 80}


def test_reserve_accrue_settle_charges_price_times_lifetime_and_the_ledger_sums(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes=CAPS, now=T0)
        budgets.reserve(session, tenant_id=tenant.id, instance_id="i-1", price_per_h_usd=1.2, amount_usd=0.2, now=T0)
    with session_scope() as session:
        account = budgets.accrue(session, tenant_id=tenant.id, now=T0 + timedelta(minutes=30))
        assert account.day_spent_musd == 600_000
        assert account.reserved_musd == 0, "the 0.20 reservation is used up by 0.60 of charges"
    with session_scope() as session:
        bill = budgets.settle(session, tenant_id=tenant.id, instance_id="i-1", now=T0 + timedelta(hours=1))
    assert bill == pytest.approx(1.2)
    with session_scope() as session:
        row = session.get(TenantBudget, tenant.id)
        assert row is not None and row.total_spent_musd == 1_200_000 and row.settled_musd == 1_200_000
        assert session.scalars(select(BudgetHold)).all() == []
        entries = session.scalars(select(LedgerEntry).order_by(LedgerEntry.id)).all()
        assert [e.kind for e in entries] == ["reserve", "accrue", "accrue", "settle"]
        assert sum(e.amount_musd for e in entries if e.kind == "accrue") == 1_200_000


def test_a_reservation_past_the_hard_cap_is_refused_and_writes_nothing(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes={**CAPS, "daily_cap_usd": 1}, now=T0)
    with pytest.raises(ReservationRefusedError), session_scope() as session:
        budgets.reserve(session, tenant_id=tenant.id, instance_id="i-1", price_per_h_usd=0.5, amount_usd=1.5, now=T0)
    with session_scope() as session:
        assert session.scalars(select(BudgetHold)).all() == []
        assert session.scalars(select(LedgerEntry)).all() == []


def test_two_concurrent_reservations_cannot_both_spend_the_same_dollars(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes=CAPS, now=T0)
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def tick(instance_id: str) -> None:
        start.wait()
        try:
            with session_scope() as session:
                budgets.reserve(
                    session, tenant_id=tenant.id, instance_id=instance_id, price_per_h_usd=1.0, amount_usd=6.0, now=T0
                )
            outcomes.append("reserved")
        except ReservationRefusedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=tick, args=(f"i-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(outcomes) == ["refused", "reserved"]
    with session_scope() as session:
        assert len(session.scalars(select(BudgetHold)).all()) == 1


def test_budget_set_and_show_from_the_command_line(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant("studio-a")
    runner = CliRunner()

    changed = runner.invoke(
        app,
        [
            "budget",
            "set",
            "studio-a",
            "--daily-cap",
            "5",
            "--monthly-cap",
            "50",
            "--soft-cap",
            "40",
            "--gpu",
            "RTX 5090",
        ],
    )
    assert changed.exit_code == 0, changed.output
    shown = runner.invoke(app, ["budget", "show", "studio-a"], env={"COLUMNS": "160"})

    assert shown.exit_code == 0, shown.output
    assert "$0.00 of $5.00" in shown.output and "$0.00 of $50.00" in shown.output
    assert "RTX 5090" in shown.output
    with session_scope() as session:
        policy = budgets.get_policy(session, tenant_id=tenant.id)
    assert (policy.daily_cap_usd, policy.monthly_cap_usd, policy.soft_cap_usd) == (5.0, 50.0, 40.0)


def test_an_inconsistent_policy_is_refused_with_its_reason(orch_env: OrchestratorEnv) -> None:
    make_tenant("studio-b")
    result = CliRunner().invoke(app, ["budget", "set", "studio-b", "--monthly-cap", "10", "--soft-cap", "20"])
    assert result.exit_code == 1
    assert "soft cap" in result.output
