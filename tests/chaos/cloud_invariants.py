"""What must hold of the rented side after a cloud fault, beside the asset and batch invariants of ``invariants.py``:
the fake provider's live instances and our live rows agree (nothing billing that we do not know of), every
reservation is released and the ledger's audit entries add up to the tenant's totals, and no hard cap is crossed.

:func:`cloud_figures` collects the counts a chaos test reports: instances created, destroyed and leaked, provider
calls that had to be retried, and each tenant's spend against its caps.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from orchestrator import budgets
from orchestrator.clock import utcnow
from orchestrator.cloud.instances import LIVE_STATES
from orchestrator.db.models import BudgetHold, Instance, LedgerEntry, TenantBudget
from orchestrator.db.session import session_scope
from orchestrator.scheduler import ledger
from tests.integration.cloud_stack import World

CREATES = ("PUT", "/api/v0/asks/")
DESTROYS = ("DELETE", "/api/v0/instances/")
LISTS = ("GET", "/api/v1/instances/")
SEARCHES = ("POST", "/api/v0/bundles/")


@dataclass(frozen=True)
class InstanceAgreement:
    """The provider's live instances against our live rows, by provider id."""

    provider_only: frozenset[str]  # billing at the provider with no live row of ours: a leak until reconciled
    rows_only: frozenset[str]  # live rows whose instance the provider no longer has (a destroy still to settle)

    @property
    def agree(self) -> bool:
        """Whether both sides name the same instances."""
        return not self.provider_only and not self.rows_only


def instance_agreement(world: World) -> InstanceAgreement:
    """Compare the fake's live (not destroyed) instances with the provider ids of our live rows."""
    provider_live = {str(i.id) for i in world.fake.live_instances()}
    with session_scope() as session:
        row_ids = {
            str(pid)
            for pid in session.scalars(
                select(Instance.provider_instance_id).where(Instance.state.in_(sorted(LIVE_STATES)))
            )
            if pid is not None
        }
    return InstanceAgreement(frozenset(provider_live - row_ids), frozenset(row_ids - provider_live))


def assert_no_instance_leaked(world: World) -> None:
    """After the drain: nothing is live at the provider, no row is live, no worker process runs."""
    agreement = instance_agreement(world)
    assert agreement.agree, agreement
    assert world.fake.live_instances() == [], "an instance still bills at the provider"
    with session_scope() as session:
        live = session.scalar(select(func.count(Instance.id)).where(Instance.state.in_(sorted(LIVE_STATES))))
    assert live == 0, f"{live} instance rows are still live"
    assert world.hook.alive() == [], "a worker process outlived its instance"


@dataclass(frozen=True)
class LedgerSums:
    """One tenant's money after the drain, in micro-dollars."""

    reserved: int
    accrued: int
    settled_entries: int
    total_spent: int
    settled: int
    holds_left: int

    def as_dict(self) -> dict[str, Any]:
        """USD figures for the report."""
        return {
            "accrued_usd": ledger.musd_to_usd(self.accrued),
            "total_spent_usd": ledger.musd_to_usd(self.total_spent),
            "holds_left": self.holds_left,
        }


def assert_ledger_sums(tenant_id: uuid.UUID) -> LedgerSums:
    """No hold is left, and the audit entries add up: the accrue entries to the tenant's total spend, the settle
    entries (each instance's bill) to what was settled, which is then everything spent."""
    with session_scope() as session:

        def entries(kind: str) -> int:
            return int(
                session.scalar(
                    select(func.coalesce(func.sum(LedgerEntry.amount_musd), 0)).where(
                        LedgerEntry.tenant_id == tenant_id, LedgerEntry.kind == kind
                    )
                )
                or 0
            )

        account = session.get(TenantBudget, tenant_id)
        assert account is not None, "the tenant has no budget account"
        holds = session.scalar(select(func.count()).select_from(BudgetHold).where(BudgetHold.tenant_id == tenant_id))
        sums = LedgerSums(
            reserved=entries("reserve"),
            accrued=entries("accrue"),
            settled_entries=entries("settle"),
            total_spent=account.total_spent_musd,
            settled=account.settled_musd,
            holds_left=int(holds or 0),
        )
    assert sums.holds_left == 0, f"{sums.holds_left} reservations were never released"
    assert sums.accrued == sums.total_spent, f"accrue entries {sums.accrued} != total spent {sums.total_spent}"
    assert sums.settled_entries == sums.settled == sums.total_spent, sums
    return sums


def spend_against_caps(tenant_id: uuid.UUID) -> dict[str, float]:
    """The tenant's day and month spend with its hard caps, in USD."""
    with session_scope() as session:
        spent = budgets.summary(session, tenant_id=tenant_id, now=utcnow())
    return {
        "day_spent_usd": round(spent.day_spent_usd, 6),
        "daily_cap_usd": spent.policy.daily_cap_usd,
        "month_spent_usd": round(spent.month_spent_usd, 6),
        "monthly_cap_usd": spent.policy.monthly_cap_usd,
    }


def assert_within_caps(tenant_id: uuid.UUID) -> dict[str, float]:
    """No hard cap was crossed: the day's and the month's spend stay within the tenant's caps."""
    figures = spend_against_caps(tenant_id)
    assert figures["day_spent_usd"] <= figures["daily_cap_usd"], figures
    assert figures["month_spent_usd"] <= figures["monthly_cap_usd"], figures
    return figures


def cloud_figures(world: World, tenant_ids: Iterable[uuid.UUID]) -> dict[str, Any]:
    """The counts of the rented side: instances created/destroyed/leaked at the provider, and the provider calls
    that did not do what they were for (retried or failed: every create request beyond the instances made, every
    destroy request beyond the instances destroyed)."""
    fake = world.fake
    created = len(fake.instances)
    destroyed = sum(1 for i in fake.instances.values() if i.destroyed)
    with session_scope() as session:
        attempts = session.scalar(
            select(func.coalesce(func.sum(Instance.destroy_attempts), 0)).where(
                Instance.tenant_id.in_(list(tenant_ids))
            )
        )
    return {
        "instances_created": created,
        "instances_destroyed": destroyed,
        "instances_leaked": created - destroyed,
        "create_requests": len(fake.requests_to(*CREATES)),
        "create_retries": len(fake.requests_to(*CREATES)) - created,
        "destroy_requests": len(fake.requests_to(*DESTROYS)),
        "destroy_retries": len(fake.requests_to(*DESTROYS)) - destroyed,
        "failed_destroy_passes": int(attempts or 0),
        "list_requests": len(fake.requests_to(*LISTS)),
        "search_requests": len(fake.requests_to(*SEARCHES)),
        "provider_billed_usd": round(fake.spent_usd, 6),
    }
