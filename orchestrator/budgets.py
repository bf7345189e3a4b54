"""Tenants' money in the database, following the pure ledger's rules (:mod:`orchestrator.scheduler.ledger`).

Every operation loads a tenant's account under a lock, applies a pure ledger function, and stores the result in the
caller's transaction, with an audit entry per movement. The lock comes from bumping the budget row's version first:
a row lock on PostgreSQL, the database write lock on SQLite. So two scheduler ticks can never both spend the same
dollars: the second waits and then sees the first one's reservation.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from orchestrator.db.models import BudgetHold, LedgerEntry, Tenant, TenantBudget
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.scheduler import ledger
from orchestrator.scheduler.model import OfferFilters, TenantPolicy, Tier


class PolicyError(ConflictError):
    """A policy setting is unknown or has the wrong type."""

    code = "invalid_policy"


POLICY_FIELDS = {f.name: f for f in dataclasses.fields(TenantPolicy) if f.name != "tenant"}
FILTER_FIELDS = {f.name: f for f in dataclasses.fields(OfferFilters)}


def policy_from_json(tenant: str, overrides: dict[str, Any]) -> TenantPolicy:
    """The defaults with a tenant's stored overrides applied; unknown or mistyped keys raise PolicyError."""
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in POLICY_FIELDS:
            raise PolicyError(f"unknown policy setting {key!r}; known: {', '.join(sorted(POLICY_FIELDS))}")
        if key == "tiers":
            try:
                values[key] = tuple(Tier(t) for t in value)
            except (ValueError, TypeError) as exc:
                raise PolicyError(f"tiers must be a list of {', '.join(t.value for t in Tier)}") from exc
        elif key == "filters":
            unknown = set(value) - set(FILTER_FIELDS)
            if unknown:
                raise PolicyError(f"unknown offer filters {sorted(unknown)}; known: {', '.join(sorted(FILTER_FIELDS))}")
            filters = dict(value)
            if "gpu_names" in filters:
                filters["gpu_names"] = tuple(filters["gpu_names"])
            values[key] = OfferFilters(**filters)
        else:
            default = POLICY_FIELDS[key].default
            if isinstance(default, bool) or not isinstance(value, int | float) or isinstance(value, bool):
                raise PolicyError(f"{key} must be a number")
            values[key] = type(default)(value) if isinstance(default, int | float) else value
    policy = TenantPolicy(tenant=tenant, **values)
    if policy.soft_cap_usd > policy.monthly_cap_usd or min(policy.daily_cap_usd, policy.monthly_cap_usd) < 0:
        raise PolicyError("caps must be non-negative and the soft cap at most the monthly cap")
    if policy.min_instances > policy.max_instances:
        raise PolicyError("min_instances must not exceed max_instances")
    return policy


def _budget_row(session: Session, *, tenant_id: uuid.UUID, now: datetime) -> TenantBudget:
    """The tenant's budget row, created with the defaults on first use, and locked for this transaction."""
    row = session.get(TenantBudget, tenant_id)
    if row is None:
        if session.get(Tenant, tenant_id) is None:
            raise NotFoundError("tenant not found")
        fresh = ledger.open_account(str(tenant_id), daily_cap_usd=0, monthly_cap_usd=0, now=now)
        row = TenantBudget(tenant_id=tenant_id, policy={}, day=fresh.day, month=fresh.month, version=0)
        session.add(row)
        session.flush()
    session.execute(
        update(TenantBudget).where(TenantBudget.tenant_id == tenant_id).values(version=TenantBudget.version + 1)
    )
    session.refresh(row)
    return row


def _account(session: Session, row: TenantBudget) -> ledger.Account:
    policy = policy_from_json(str(row.tenant_id), row.policy)
    holds = {
        h.instance_id: ledger.Hold(
            instance_id=h.instance_id,
            price_per_h_musd=h.price_per_h_musd,
            started_at=h.started_at,
            accrued_until=h.accrued_until,
            charged_musd=h.charged_musd,
            left_musd=h.left_musd,
        )
        for h in session.scalars(select(BudgetHold).where(BudgetHold.tenant_id == row.tenant_id))
    }
    return ledger.Account(
        tenant=str(row.tenant_id),
        daily_cap_musd=ledger.usd_to_musd(policy.daily_cap_usd),
        monthly_cap_musd=ledger.usd_to_musd(policy.monthly_cap_usd),
        day=row.day,
        month=row.month,
        day_spent_musd=row.day_spent_musd,
        month_spent_musd=row.month_spent_musd,
        total_spent_musd=row.total_spent_musd,
        settled_musd=row.settled_musd,
        holds=holds,
    )


def _store(session: Session, row: TenantBudget, before: ledger.Account, after: ledger.Account, now: datetime) -> None:
    errors = ledger.ledger_errors(after)
    if errors:
        raise RuntimeError(f"ledger of tenant {row.tenant_id} would not sum: {errors}")
    row.day, row.month = after.day, after.month
    row.day_spent_musd, row.month_spent_musd = after.day_spent_musd, after.month_spent_musd
    row.total_spent_musd, row.settled_musd = after.total_spent_musd, after.settled_musd
    old, new = before.live_holds, after.live_holds
    for instance_id in old.keys() - new.keys():
        session.execute(delete(BudgetHold).where(BudgetHold.instance_id == instance_id))
    for instance_id, hold in new.items():
        previous = old.get(instance_id)
        if previous == hold:
            continue
        stored = session.get(BudgetHold, instance_id)
        if stored is None:
            stored = BudgetHold(instance_id=instance_id, tenant_id=row.tenant_id)
            session.add(stored)
        stored.price_per_h_musd, stored.started_at = hold.price_per_h_musd, hold.started_at
        stored.accrued_until, stored.charged_musd, stored.left_musd = (
            hold.accrued_until,
            hold.charged_musd,
            hold.left_musd,
        )
        if previous is None:
            session.add(
                LedgerEntry(
                    tenant_id=row.tenant_id, instance_id=instance_id, kind="reserve", amount_musd=hold.left_musd, at=now
                )
            )
        elif hold.charged_musd != previous.charged_musd:
            session.add(
                LedgerEntry(
                    tenant_id=row.tenant_id,
                    instance_id=instance_id,
                    kind="accrue",
                    amount_musd=hold.charged_musd - previous.charged_musd,
                    at=now,
                )
            )


def set_policy(session: Session, *, tenant_id: uuid.UUID, changes: dict[str, Any], now: datetime) -> TenantPolicy:
    """Merge ``changes`` into the tenant's stored policy (validated); returns the policy in force."""
    row = _budget_row(session, tenant_id=tenant_id, now=now)
    merged = {**row.policy, **changes}
    policy = policy_from_json(str(tenant_id), merged)
    row.policy = merged
    return policy


def get_policy(session: Session, *, tenant_id: uuid.UUID) -> TenantPolicy:
    """The tenant's policy in force (the defaults when nothing was set)."""
    row = session.get(TenantBudget, tenant_id)
    return policy_from_json(str(tenant_id), row.policy if row else {})


def reserve(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    instance_id: str,
    price_per_h_usd: float,
    amount_usd: float,
    now: datetime,
) -> None:
    """Hold money for a rental before it is made; raises ReservationRefusedError past a hard cap."""
    row = _budget_row(session, tenant_id=tenant_id, now=now)
    before = _account(session, row)
    after = ledger.reserve(
        before, instance_id=instance_id, price_per_h_usd=price_per_h_usd, amount_usd=amount_usd, now=now
    )
    _store(session, row, before, after, now)


def accrue(session: Session, *, tenant_id: uuid.UUID, now: datetime) -> ledger.Account:
    """Charge the tenant's live instances up to ``now``; returns the account."""
    row = _budget_row(session, tenant_id=tenant_id, now=now)
    before = _account(session, row)
    after = ledger.accrue(before, now)
    _store(session, row, before, after, now)
    return after


def settle(session: Session, *, tenant_id: uuid.UUID, instance_id: str, now: datetime) -> float:
    """Close a destroyed instance's charges and release the rest of its reservation; returns its bill in USD."""
    row = _budget_row(session, tenant_id=tenant_id, now=now)
    before = _account(session, row)
    # Accrued first, as its own movement, so that the audit entries add up to the bill.
    accrued = ledger.accrue(before, now)
    _store(session, row, before, accrued, now)
    after, bill = ledger.settle(accrued, instance_id=instance_id, now=now)
    _store(session, row, accrued, after, now)
    session.add(LedgerEntry(tenant_id=tenant_id, instance_id=instance_id, kind="settle", amount_musd=bill, at=now))
    return ledger.musd_to_usd(bill)


@dataclass(frozen=True)
class BudgetSummary:
    """What ``orchestrator budget show`` prints."""

    policy: TenantPolicy
    day_spent_usd: float
    month_spent_usd: float
    total_spent_usd: float
    reserved_usd: float
    remaining_usd: float
    live_instances: int


def summary(session: Session, *, tenant_id: uuid.UUID, now: datetime) -> BudgetSummary:
    """The tenant's policy and money, charged up to ``now``."""
    account = accrue(session, tenant_id=tenant_id, now=now)
    return BudgetSummary(
        policy=get_policy(session, tenant_id=tenant_id),
        day_spent_usd=ledger.musd_to_usd(account.day_spent_musd),
        month_spent_usd=ledger.musd_to_usd(account.month_spent_musd),
        total_spent_usd=ledger.musd_to_usd(account.total_spent_musd),
        reserved_usd=ledger.musd_to_usd(account.reserved_musd),
        remaining_usd=ledger.musd_to_usd(account.remaining_musd),
        live_instances=len(account.live_holds),
    )
