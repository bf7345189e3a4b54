"""Money as people watch it: spend today and this month against the caps, spend over time, the instances billing
now, the scheduler's reasons, and every tenant's spend for the operator.

Read-only: figures are charged up to ``now`` in memory (:func:`orchestrator.budgets.current_summary`), so a browser
polling this view never takes the budget lock that scheduler ticks need, and never writes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from orchestrator.budgets import BudgetSummary, current_summary
from orchestrator.cloud.instances import LIVE_STATES
from orchestrator.db.models import ApiKey, BudgetHold, Instance, LedgerEntry, Tenant
from orchestrator.enums import InstanceStatus
from orchestrator.scheduler import ledger
from orchestrator.scheduler_events import recent_events

HOURS_SHOWN = 48
DAYS_SHOWN = 60
EVENTS_SHOWN = 20
# Charges are written as "accrue" entries as instances run; a "settle" entry repeats an instance's whole bill when it
# is destroyed (an audit total), so adding it would count the money twice.
SPEND_KINDS = ("accrue",)


class Bucket(StrEnum):
    """The width of one bar of the spend chart."""

    HOUR = "hour"
    DAY = "day"


@dataclass(frozen=True)
class CapUse:
    """Spend in a period against its cap; ``fraction`` is clamped to [0, 1] for a progress bar."""

    label: str
    spent_usd: float
    cap_usd: float

    @property
    def fraction(self) -> float:
        """Share of the cap used, 0..1 (a zero cap is full as soon as anything is spent)."""
        if self.cap_usd <= 0:
            return 1.0 if self.spent_usd > 0 else 0.0
        return max(0.0, min(1.0, self.spent_usd / self.cap_usd))

    @property
    def percent(self) -> int:
        """``fraction`` as a whole percentage."""
        return round(self.fraction * 100)

    @property
    def reached(self) -> bool:
        """Whether the spend has reached the cap."""
        return self.spent_usd >= self.cap_usd


@dataclass(frozen=True)
class SpendPoint:
    """Spend within one bucket starting at ``start`` (UTC)."""

    start: datetime
    usd: float


@dataclass(frozen=True)
class InstanceNow:
    """One rented instance that may be billing now."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_name: str
    gpu_name: str
    state: InstanceStatus
    price_per_h_usd: float
    created_at: datetime
    uptime_s: float
    # What its reservation has been charged up to now; None when it has no reservation (nothing is counted).
    cost_usd: float | None
    provider_instance_id: str | None
    status_msg: str
    last_error: str | None

    @property
    def alert(self) -> bool:
        """Destroys kept failing: it may still bill, and a person must look."""
        return self.state is InstanceStatus.ALERT


@dataclass(frozen=True)
class EventView:
    """One recorded scheduler decision (``orchestrator.scheduler_events``)."""

    at: datetime
    tenant_id: uuid.UUID | None
    kind: str
    reason: str
    message: str
    instance_id: str | None


@dataclass(frozen=True)
class TenantSpend:
    """The live spend view of one tenant."""

    summary: BudgetSummary
    day: CapUse
    month: CapUse
    soft: CapUse
    hourly: list[SpendPoint]
    daily: list[SpendPoint]
    instances: list[InstanceNow]
    events: list[EventView]
    now: datetime


@dataclass(frozen=True)
class TenantSpendRow:
    """One line of the operator's table of tenants."""

    tenant_id: uuid.UUID
    name: str
    disabled: bool
    summary: BudgetSummary
    day: CapUse
    month: CapUse
    active_keys: int


def cap_uses(summary: BudgetSummary) -> tuple[CapUse, CapUse, CapUse]:
    """Today against the daily cap, this month against the monthly cap, and the month (with reservations) against
    the soft cap, which is how the scheduler compares them."""
    policy = summary.policy
    return (
        CapUse("today", summary.day_spent_usd, policy.daily_cap_usd),
        CapUse("this month", summary.month_spent_usd, policy.monthly_cap_usd),
        CapUse("soft cap", summary.month_spent_usd + summary.reserved_usd, policy.soft_cap_usd),
    )


def _bucket_key(session: Session, bucket: Bucket) -> ColumnElement[str]:
    """The bucket of a ledger entry as text in UTC ("2026-11-21 14" or "2026-11-21"), grouped in the database."""
    if session.get_bind().dialect.name == "postgresql":
        pattern = "YYYY-MM-DD HH24" if bucket is Bucket.HOUR else "YYYY-MM-DD"
        return func.to_char(func.timezone("UTC", LedgerEntry.at), pattern)
    # SQLite keeps UTC as text ("YYYY-MM-DD HH:MM:SS.ffffff", see UTCDateTime).
    return func.strftime("%Y-%m-%d %H" if bucket is Bucket.HOUR else "%Y-%m-%d", LedgerEntry.at)


def _bucket_starts(now: datetime, bucket: Bucket) -> list[datetime]:
    now = now.astimezone(UTC)
    if bucket is Bucket.HOUR:
        last = now.replace(minute=0, second=0, microsecond=0)
        return [last - timedelta(hours=n) for n in range(HOURS_SHOWN - 1, -1, -1)]
    last = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return [last - timedelta(days=n) for n in range(DAYS_SHOWN - 1, -1, -1)]


def _key_of(start: datetime, bucket: Bucket) -> str:
    return start.strftime("%Y-%m-%d %H" if bucket is Bucket.HOUR else "%Y-%m-%d")


def spend_series(
    session: Session, *, now: datetime, bucket: Bucket, tenant_id: uuid.UUID | None = None
) -> list[SpendPoint]:
    """Charges per hour for the last 48 hours or per day for the last 60 days, oldest first, empty buckets as 0;
    one tenant's, or every tenant's when ``tenant_id`` is None."""
    starts = _bucket_starts(now, bucket)
    key = _bucket_key(session, bucket)
    query = (
        select(key, func.sum(LedgerEntry.amount_musd))
        .where(LedgerEntry.kind.in_(SPEND_KINDS), LedgerEntry.at >= starts[0])
        .group_by(key)
    )
    if tenant_id is not None:
        query = query.where(LedgerEntry.tenant_id == tenant_id)
    sums = {str(k): int(v or 0) for k, v in session.execute(query)}
    return [SpendPoint(start, ledger.musd_to_usd(sums.get(_key_of(start, bucket), 0))) for start in starts]


def instances_now(session: Session, *, now: datetime, tenant_id: uuid.UUID | None = None) -> list[InstanceNow]:
    """Instances that may be billing (every live state), those in ALERT first, then the oldest."""
    query = (
        select(Instance, Tenant.name)
        .join(Tenant, Tenant.id == Instance.tenant_id)
        .where(Instance.state.in_(sorted(LIVE_STATES)))
        .order_by(Instance.created_at, Instance.id)
    )
    if tenant_id is not None:
        query = query.where(Instance.tenant_id == tenant_id)
    rows = session.execute(query).all()
    # A hold is keyed by the instance id as text (the ledger's key), not by a foreign key.
    holds = {
        h.instance_id: h
        for h in session.scalars(select(BudgetHold).where(BudgetHold.instance_id.in_([str(r.id) for r, _ in rows])))
    }
    found: list[InstanceNow] = []
    for row, tenant_name in rows:
        hold = holds.get(str(row.id))
        cost = (
            ledger.musd_to_usd(ledger.cost_musd(hold.price_per_h_musd, now - hold.started_at))
            if hold is not None
            else None
        )
        found.append(
            InstanceNow(
                id=row.id,
                tenant_id=row.tenant_id,
                tenant_name=tenant_name,
                gpu_name=row.gpu_name,
                state=InstanceStatus(row.state),
                price_per_h_usd=row.price_per_h_usd,
                created_at=row.created_at,
                uptime_s=max(0.0, (now - row.created_at).total_seconds()),
                cost_usd=cost,
                provider_instance_id=row.provider_instance_id,
                status_msg=row.status_msg,
                last_error=row.last_error,
            )
        )
    found.sort(key=lambda i: not i.alert)
    return found


def events(session: Session, *, tenant_id: uuid.UUID | None = None, limit: int = EVENTS_SHOWN) -> list[EventView]:
    """The newest scheduler decisions first."""
    return [
        EventView(e.at, e.tenant_id, e.kind, e.reason, e.message, e.instance_id)
        for e in recent_events(session, tenant_id=tenant_id, limit=limit)
    ]


def tenant_spend(session: Session, *, tenant_id: uuid.UUID, now: datetime) -> TenantSpend:
    """Everything the live spend view of one tenant shows."""
    summary = current_summary(session, tenant_id=tenant_id, now=now)
    day, month, soft = cap_uses(summary)
    return TenantSpend(
        summary=summary,
        day=day,
        month=month,
        soft=soft,
        hourly=spend_series(session, now=now, bucket=Bucket.HOUR, tenant_id=tenant_id),
        daily=spend_series(session, now=now, bucket=Bucket.DAY, tenant_id=tenant_id),
        instances=instances_now(session, now=now, tenant_id=tenant_id),
        events=events(session, tenant_id=tenant_id),
        now=now,
    )


def tenants_spend(session: Session, *, now: datetime) -> list[TenantSpendRow]:
    """Every tenant's spend against its caps, with its number of unrevoked keys, by name."""
    keys = dict(
        session.execute(
            select(ApiKey.tenant_id, func.count(ApiKey.id))
            .where(ApiKey.revoked_at.is_(None))
            .group_by(ApiKey.tenant_id)
        ).all()
    )
    rows: list[TenantSpendRow] = []
    for tenant in session.scalars(select(Tenant).order_by(Tenant.name)):
        summary = current_summary(session, tenant_id=tenant.id, now=now)
        day, month, _ = cap_uses(summary)
        rows.append(
            TenantSpendRow(tenant.id, tenant.name, tenant.disabled, summary, day, month, int(keys.get(tenant.id, 0)))
        )
    return rows
