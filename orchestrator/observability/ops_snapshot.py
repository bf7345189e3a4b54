"""The operator's figures read from the database at scrape time: queues, spend, budgets, instances, throughput.

The database is the only place that sees every API process and Celery worker, so figures come from rows, not from
in-process counters. Every query is grouped and uses an index (batches by status, instances by state, ledger and
samples by their keys); the collector caches the result for a few seconds. Judgements (leak suspects, latency
quantiles) are pure functions of the rows, so they are tested without a database.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.budgets import current_summary
from orchestrator.cloud.instances import LIVE_STATES
from orchestrator.cloud.throughput_samples import instance_source
from orchestrator.db.models import Asset, Batch, GpuThroughputSample, Instance, Tenant, TenantCloudState
from orchestrator.enums import BatchStatus, InstanceStatus
from orchestrator.scheduler import ledger

# Past its idle timeout or boot deadline by this much, an instance the scheduler should have destroyed is a leak
# suspect: a few ticks of slack, so one slow tick does not page anyone.
LEAK_GRACE = timedelta(minutes=5)
# Latency quantiles are taken over batches finished within this window, at most this many of them.
LATENCY_WINDOW = timedelta(hours=1)
LATENCY_MAX_ROWS = 5000
QUANTILES = (0.5, 0.9, 0.99)
QUEUED_STATUSES = (BatchStatus.PENDING, BatchStatus.RUNNING)
FINISHED_STATUSES = (BatchStatus.DONE, BatchStatus.FAILED)
UNKNOWN_BACKEND = "unknown"


class LeakReason(StrEnum):
    """Why an instance is suspected of billing for nothing."""

    IDLE = "idle"
    BOOT = "boot"


@dataclass(frozen=True)
class TenantFigures:
    """One tenant's queue and money."""

    name: str
    queued_batches: dict[str, int]
    queued_items: dict[str, int]
    oldest_pending_age_s: float | None
    spend_day_usd: float
    spend_month_usd: float
    cap_day_usd: float
    cap_month_usd: float
    soft_cap_usd: float
    reserved_usd: float
    budget_configured: bool
    spend_rate_usd_per_h: float
    paused: bool
    leak_suspects: dict[LeakReason, int]


@dataclass(frozen=True)
class BatchLatency:
    """Run time (started to finished) of one backend's batches finished within :data:`LATENCY_WINDOW`."""

    count: int
    sum_s: float
    quantiles: dict[float, float]


@dataclass(frozen=True)
class ThroughputFigure:
    """The newest measured images/s of one live instance."""

    instance_id: str
    gpu_name: str
    images_per_s: float
    age_s: float


@dataclass(frozen=True)
class OpsSnapshot:
    """Everything the database collector exports, as of ``taken_at``."""

    taken_at: datetime
    tenants: list[TenantFigures]
    instances_by_state: dict[str, int]
    destroy_failing: int
    batches_finished: dict[tuple[str, str], int]
    latency: dict[str, BatchLatency]
    throughput: list[ThroughputFigure] = field(default_factory=list)


@dataclass(frozen=True)
class LiveInstance:
    """The columns of a live instance row that the leak judgement needs."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    state: InstanceStatus
    created_at: datetime
    ready_at: datetime | None
    last_busy_at: datetime | None
    destroy_attempts: int
    price_per_h_musd: int
    gpu_name: str


def leak_reason(
    instance: LiveInstance,
    *,
    running_batches: int,
    idle_timeout_s: float,
    boot_deadline_s: float,
    now: datetime,
    grace: timedelta = LEAK_GRACE,
) -> LeakReason | None:
    """Whether the scheduler should already have destroyed this instance: booting past its deadline, or ready
    with no running batch past the idle timeout (both plus ``grace``)."""
    if instance.state in (InstanceStatus.REQUESTED, InstanceStatus.BOOTING):
        if now - instance.created_at > timedelta(seconds=boot_deadline_s) + grace:
            return LeakReason.BOOT
        return None
    if instance.state is InstanceStatus.READY and running_batches == 0:
        last_use = max(t for t in (instance.created_at, instance.ready_at, instance.last_busy_at) if t is not None)
        if now - last_use > timedelta(seconds=idle_timeout_s) + grace:
            return LeakReason.IDLE
    return None


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ascending values by linear interpolation; NaN when there are none."""
    if not sorted_values:
        return math.nan
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def batch_latency(durations_s: Sequence[float]) -> BatchLatency:
    """Count, sum and :data:`QUANTILES` of batch run times."""
    ordered = sorted(durations_s)
    return BatchLatency(len(ordered), sum(ordered), {q: quantile(ordered, q) for q in QUANTILES})


def _aware(value: datetime | str) -> datetime:
    # Aggregates (min/max) bypass the UTC column type on SQLite, which then hands back naive values or text.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _queue(session: Session) -> tuple[dict[uuid.UUID, dict[str, int]], dict[uuid.UUID, dict[str, int]]]:
    rows = session.execute(
        select(Batch.tenant_id, Batch.status, func.count(func.distinct(Batch.id)), func.count(Asset.id))
        .outerjoin(Asset, Asset.batch_id == Batch.id)
        .where(Batch.status.in_(QUEUED_STATUSES))
        .group_by(Batch.tenant_id, Batch.status)
    )
    batches: dict[uuid.UUID, dict[str, int]] = {}
    items: dict[uuid.UUID, dict[str, int]] = {}
    for tenant_id, status, batch_count, item_count in rows:
        batches.setdefault(tenant_id, {})[str(status)] = int(batch_count)
        items.setdefault(tenant_id, {})[str(status)] = int(item_count)
    return batches, items


def _oldest_pending(session: Session) -> dict[uuid.UUID, datetime]:
    rows = session.execute(
        select(Batch.tenant_id, func.min(Batch.created_at))
        .where(Batch.status == BatchStatus.PENDING)
        .group_by(Batch.tenant_id)
    )
    return {tenant_id: _aware(oldest) for tenant_id, oldest in rows if oldest is not None}


def _live_instances(session: Session) -> list[LiveInstance]:
    rows = session.execute(
        select(
            Instance.id,
            Instance.tenant_id,
            Instance.state,
            Instance.created_at,
            Instance.ready_at,
            Instance.last_busy_at,
            Instance.destroy_attempts,
            Instance.price_per_h_musd,
            Instance.gpu_name,
        ).where(Instance.state.in_(sorted(LIVE_STATES)))
    )
    return [LiveInstance(r[0], r[1], InstanceStatus(r[2]), r[3], r[4], r[5], int(r[6]), int(r[7]), r[8]) for r in rows]


def _running_per_instance(session: Session, instance_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    if not instance_ids:
        return {}
    rows = session.execute(
        select(Batch.instance_id, func.count(Batch.id))
        .where(Batch.instance_id.in_(instance_ids), Batch.status == BatchStatus.RUNNING)
        .group_by(Batch.instance_id)
    )
    return {instance_id: int(count) for instance_id, count in rows if instance_id is not None}


def _finished_counts(session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(Batch.backend, Batch.status, func.count(Batch.id))
        .where(Batch.status.in_(FINISHED_STATUSES))
        .group_by(Batch.backend, Batch.status)
    )
    return {(backend or UNKNOWN_BACKEND, str(status)): int(count) for backend, status, count in rows}


def _latencies(session: Session, *, now: datetime) -> dict[str, BatchLatency]:
    rows = session.execute(
        select(Batch.backend, Batch.started_at, Batch.finished_at)
        .where(Batch.status == BatchStatus.DONE, Batch.finished_at >= now - LATENCY_WINDOW)
        .limit(LATENCY_MAX_ROWS)
    )
    durations: dict[str, list[float]] = {}
    for backend, started, finished in rows:
        if started is not None and finished is not None:
            durations.setdefault(backend or UNKNOWN_BACKEND, []).append(max(0.0, (finished - started).total_seconds()))
    return {backend: batch_latency(values) for backend, values in durations.items()}


def _throughput(session: Session, live: list[LiveInstance], *, now: datetime) -> list[ThroughputFigure]:
    sources = {instance_source(i.id): i for i in live}
    if not sources:
        return []
    rows = session.execute(
        select(GpuThroughputSample.source, GpuThroughputSample.images_per_s, GpuThroughputSample.measured_at)
        .where(GpuThroughputSample.source.in_(list(sources)))
        .order_by(GpuThroughputSample.measured_at.desc())
    )
    newest: dict[str, ThroughputFigure] = {}
    for source, images_per_s, measured_at in rows:
        if source not in newest:
            instance = sources[source]
            age_s = max(0.0, (now - _aware(measured_at)).total_seconds())
            newest[source] = ThroughputFigure(str(instance.id), instance.gpu_name, float(images_per_s), age_s)
    return list(newest.values())


def read_snapshot(session: Session, *, now: datetime) -> OpsSnapshot:
    """Read every exported figure in one read-only pass (no budget lock is taken, nothing is written)."""
    tenants = list(session.execute(select(Tenant.id, Tenant.name).order_by(Tenant.name)))
    batches, items = _queue(session)
    oldest = _oldest_pending(session)
    live = _live_instances(session)
    running = _running_per_instance(session, [i.id for i in live])
    paused = dict(session.execute(select(TenantCloudState.tenant_id, TenantCloudState.paused)).all())
    by_state = {str(state): 0 for state in InstanceStatus}
    by_state.update(
        {
            str(state): int(count)
            for state, count in session.execute(
                select(Instance.state, func.count(Instance.id)).group_by(Instance.state)
            )
        }
    )
    figures: list[TenantFigures] = []
    for tenant_id, name in tenants:
        summary = current_summary(session, tenant_id=tenant_id, now=now)
        policy = summary.policy
        own = [i for i in live if i.tenant_id == tenant_id]
        reasons = [
            leak_reason(
                i,
                running_batches=running.get(i.id, 0),
                idle_timeout_s=policy.idle_timeout_s,
                boot_deadline_s=policy.boot_deadline_s,
                now=now,
            )
            for i in own
        ]
        # Instances kept warm on purpose (min_instances) idle without being leaks.
        idle = max(0, reasons.count(LeakReason.IDLE) - policy.min_instances)
        waiting_since = oldest.get(tenant_id)
        figures.append(
            TenantFigures(
                name=name,
                queued_batches=batches.get(tenant_id, {}),
                queued_items=items.get(tenant_id, {}),
                oldest_pending_age_s=max(0.0, (now - waiting_since).total_seconds()) if waiting_since else None,
                spend_day_usd=summary.day_spent_usd,
                spend_month_usd=summary.month_spent_usd,
                cap_day_usd=policy.daily_cap_usd,
                cap_month_usd=policy.monthly_cap_usd,
                soft_cap_usd=policy.soft_cap_usd,
                reserved_usd=summary.reserved_usd,
                budget_configured=summary.configured,
                spend_rate_usd_per_h=ledger.musd_to_usd(sum(i.price_per_h_musd for i in own)),
                paused=bool(paused.get(tenant_id, False)),
                leak_suspects={LeakReason.IDLE: idle, LeakReason.BOOT: reasons.count(LeakReason.BOOT)},
            )
        )
    return OpsSnapshot(
        taken_at=now,
        tenants=figures,
        instances_by_state=by_state,
        destroy_failing=sum(1 for i in live if i.destroy_attempts > 0),
        batches_finished=_finished_counts(session),
        latency=_latencies(session, now=now),
        throughput=_throughput(session, live, now=now),
    )
