"""Tenants' money in the database, following the pure ledger's rules (:mod:`orchestrator.scheduler.ledger`).

Every operation loads a tenant's account under a lock, applies a pure ledger function, and stores the result in the
caller's transaction, with an audit entry per movement. The lock comes from bumping the budget row's version first:
a row lock on PostgreSQL, the database write lock on SQLite. So two scheduler ticks can never both spend the same
dollars: the second waits and then sees the first one's reservation.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Mapping
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
    """A policy setting is unknown, has the wrong type, is out of range, or contradicts another setting.

    ``fields`` maps each bad setting to what is wrong with it and what is allowed; ``message`` joins them.
    """

    code = "invalid_policy"

    def __init__(self, message: str, *, fields: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = dict(fields or {})

    @classmethod
    def of(cls, fields: Mapping[str, str]) -> PolicyError:
        """One error naming every bad field."""
        return cls("; ".join(f"{name}: {problem}" for name, problem in fields.items()), fields=fields)


POLICY_FIELDS = {f.name: f for f in dataclasses.fields(TenantPolicy) if f.name != "tenant"}
FILTER_FIELDS = {f.name: f for f in dataclasses.fields(OfferFilters)}
# What a user may set (inclusive bounds). Stored policies are read without them, so tightening a bound never stops
# the scheduler from reading an older policy.
POLICY_LIMITS: dict[str, tuple[float, float]] = {
    "daily_cap_usd": (0.0, 1_000_000.0),
    "monthly_cap_usd": (0.0, 10_000_000.0),
    "soft_cap_usd": (0.0, 10_000_000.0),
    "max_price_per_h_usd": (0.0, 1_000.0),
    "min_instances": (0, 1_000),
    "max_instances": (0, 1_000),
    "idle_timeout_s": (0.0, 7 * 86_400.0),
    "max_gpu_wait_s": (0.0, 7 * 86_400.0),
    "scale_up_threshold_gpu_s": (0.0, 1e9),
    "max_overhead_ratio": (0.0, 1_000.0),
    "scale_up_wait_s": (0.0, 7 * 86_400.0),
    "min_runtime_s": (0.0, 7 * 86_400.0),
    "boot_deadline_s": (0.0, 7 * 86_400.0),
}
MAX_GPU_NAMES = 50
MAX_GPU_NAME_CHARS = 100


def _number(value: float) -> str:
    return f"{value:,.10g}"


def _money(usd: float) -> str:
    return f"${usd:,.2f}"


def policy_from_json(tenant: str, overrides: Mapping[str, Any]) -> TenantPolicy:
    """The defaults with a tenant's stored overrides applied; unknown, mistyped or contradictory settings raise
    PolicyError naming each bad field."""
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for key, value in overrides.items():
        if key not in POLICY_FIELDS:
            problems[key] = f"unknown policy setting; known: {', '.join(sorted(POLICY_FIELDS))}"
        elif key == "tiers":
            try:
                if isinstance(value, str):
                    raise TypeError(value)
                values[key] = tuple(Tier(t) for t in value)
            except (ValueError, TypeError):
                problems[key] = f"must be a list of {', '.join(t.value for t in Tier)}"
        elif key == "filters":
            if not isinstance(value, Mapping):
                problems[key] = "must be a table of offer filters"
                continue
            unknown = set(value) - set(FILTER_FIELDS)
            if unknown:
                problems[key] = f"unknown offer filters {sorted(unknown)}; known: {', '.join(sorted(FILTER_FIELDS))}"
                continue
            filters = dict(value)
            if "gpu_names" in filters:
                names = filters["gpu_names"]
                if isinstance(names, str) or not all(isinstance(n, str) for n in names or ()):
                    problems["gpu_names"] = "must be a list of GPU model names"
                    continue
                filters["gpu_names"] = tuple(names)
            values[key] = OfferFilters(**filters)
        else:
            default = POLICY_FIELDS[key].default
            if isinstance(default, bool) or not isinstance(value, int | float) or isinstance(value, bool):
                problems[key] = f"must be a number, not {str(value)[:40]!r}"
                continue
            try:
                values[key] = type(default)(value) if isinstance(default, int | float) else value
            except (OverflowError, ValueError):
                problems[key] = f"must be a finite number, not {str(value)[:40]!r}"
    if problems:
        raise PolicyError.of(problems)
    policy = TenantPolicy(tenant=tenant, **values)
    problems = _consistency_problems(policy)
    if problems:
        raise PolicyError.of(problems)
    return policy


def _consistency_problems(policy: TenantPolicy) -> dict[str, str]:
    problems: dict[str, str] = {}
    for key in ("daily_cap_usd", "monthly_cap_usd"):
        if getattr(policy, key) < 0:
            problems[key] = f"must not be negative (got {_number(getattr(policy, key))})"
    if policy.soft_cap_usd > policy.monthly_cap_usd:
        problems["soft_cap_usd"] = (
            f"the soft cap ({_money(policy.soft_cap_usd)}) must not exceed the monthly cap "
            f"({_money(policy.monthly_cap_usd)})"
        )
    if policy.min_instances > policy.max_instances:
        problems["min_instances"] = (
            f"must not exceed max_instances: min {policy.min_instances} is more than max {policy.max_instances}"
        )
    return problems


def _change_problems(changes: Mapping[str, Any]) -> dict[str, str]:
    """Range and type checks of the values a user sets (see POLICY_LIMITS)."""
    problems: dict[str, str] = {}
    for key, value in changes.items():
        if key in POLICY_LIMITS and isinstance(value, int | float) and not isinstance(value, bool):
            low, high = POLICY_LIMITS[key]
            whole = isinstance(POLICY_FIELDS[key].default, int)
            allowed = f"{'a whole number' if whole else 'a number'} from {_number(low)} to {_number(high)}"
            if not math.isfinite(value):
                problems[key] = f"must be {allowed}, not {value}"
            elif value < low:
                problems[key] = f"must not be negative (got {_number(value)}); allowed: {allowed}"
            elif value > high:
                problems[key] = f"is too large (got {_number(value)}); allowed: {allowed}"
            elif whole and not float(value).is_integer():
                problems[key] = f"must be a whole number (got {_number(value)})"
        elif key == "tiers" and isinstance(value, list | tuple):
            if not value:
                problems[key] = f"allow at least one tier ({', '.join(t.value for t in Tier)})"
            elif len(set(value)) != len(value):
                problems[key] = "names a tier twice"
        elif key == "filters" and isinstance(value, Mapping) and isinstance(value.get("gpu_names"), list | tuple):
            names = value["gpu_names"]
            if len(names) > MAX_GPU_NAMES:
                problems["gpu_names"] = f"at most {MAX_GPU_NAMES} GPU models (got {len(names)})"
            elif any(not isinstance(n, str) or not 1 <= len(n.strip()) <= MAX_GPU_NAME_CHARS for n in names):
                problems["gpu_names"] = f"each GPU model name has 1-{MAX_GPU_NAME_CHARS} characters"
    return problems


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
    """Merge ``changes`` into the tenant's stored policy; returns the policy in force.

    Refused with a PolicyError naming every bad field (nothing is stored): unknown settings, wrong types, values
    out of POLICY_LIMITS, contradictions (soft cap above the monthly cap, min above max instances), and a daily or
    monthly hard cap changed to less than what the tenant has already spent today or this month.
    """
    row = _budget_row(session, tenant_id=tenant_id, now=now)
    current = policy_from_json(str(tenant_id), row.policy)
    merged = {**row.policy, **changes}
    problems = _change_problems(changes)
    policy: TenantPolicy | None = None
    try:
        policy = policy_from_json(str(tenant_id), merged)
    except PolicyError as exc:
        problems = {**exc.fields, **problems}
    if policy is not None:
        account = ledger.accrue(_account(session, row), now)
        for key, spent_musd, period in (
            ("daily_cap_usd", account.day_spent_musd, "today"),
            ("monthly_cap_usd", account.month_spent_musd, "this month"),
        ):
            cap = getattr(policy, key)
            if key in problems or cap == getattr(current, key) or ledger.usd_to_musd(cap) >= spent_musd:
                continue
            spent = ledger.musd_to_usd(spent_musd)
            problems[key] = (
                f"{_money(cap)} is below what was already spent {period} ({_money(spent)}); "
                f"set it to at least {_money(math.ceil(spent * 100) / 100)}"
            )
    if problems or policy is None:
        raise PolicyError.of(problems)
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
    # False while the tenant never had a budget: the scheduler rents nothing for it until one is set.
    configured: bool = True


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


def current_summary(session: Session, *, tenant_id: uuid.UUID, now: datetime) -> BudgetSummary:
    """What :func:`summary` says, read-only: charged up to ``now`` in memory, without taking the budget lock or
    writing anything. For views polled by browsers, which must neither wait on nor delay a scheduler tick, and must
    not create a budget (that would let the scheduler rent for a tenant that never set one)."""
    row = session.get(TenantBudget, tenant_id)
    if row is None:
        policy = policy_from_json(str(tenant_id), {})
        return BudgetSummary(
            policy=policy,
            day_spent_usd=0.0,
            month_spent_usd=0.0,
            total_spent_usd=0.0,
            reserved_usd=0.0,
            remaining_usd=min(policy.daily_cap_usd, policy.monthly_cap_usd),
            live_instances=0,
            configured=False,
        )
    account = ledger.accrue(_account(session, row), now)
    return BudgetSummary(
        policy=policy_from_json(str(tenant_id), row.policy),
        day_spent_usd=ledger.musd_to_usd(account.day_spent_musd),
        month_spent_usd=ledger.musd_to_usd(account.month_spent_musd),
        total_spent_usd=ledger.musd_to_usd(account.total_spent_musd),
        reserved_usd=ledger.musd_to_usd(account.reserved_musd),
        remaining_usd=ledger.musd_to_usd(account.remaining_musd),
        live_instances=len(account.live_holds),
    )
