"""Data access for rented-instance rows: what the cloud backend reads and the conditional updates it makes.

Slots are taken and given back with conditional UPDATEs, so two analyze tasks can never both take the last slot of
an instance, and a slot is never taken on an instance that stopped being ready.

Enqueueing is at-least-once and harmless to repeat: an analyze message for a batch that is already claimed, done
or still without a free backend finds nothing to claim, or leaves the batch waiting, and spends no attempt.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orchestrator.db.models import Batch, Instance
from orchestrator.enums import BatchStatus, InstanceStatus

# Two batches per instance: one runs while the next one's media travel, so the GPU never waits on the network.
MAX_IN_FLIGHT = 2
# Rows that may still exist at the provider (and bill); the others are history.
LIVE_STATES = frozenset(
    {
        InstanceStatus.REQUESTED,
        InstanceStatus.BOOTING,
        InstanceStatus.READY,
        InstanceStatus.FAILED,
        InstanceStatus.DESTROYING,
        InstanceStatus.ALERT,
    }
)


def live_instances(session: Session, *, tenant_id: uuid.UUID | None = None) -> list[Instance]:
    """Rows that may still exist at the provider, oldest first (all tenants when ``tenant_id`` is None)."""
    query = select(Instance).where(Instance.state.in_(sorted(LIVE_STATES)))
    if tenant_id is not None:
        query = query.where(Instance.tenant_id == tenant_id)
    return list(session.scalars(query.order_by(Instance.created_at, Instance.id)))


def all_instances(session: Session, *, include_history: bool = False) -> list[Instance]:
    """Rows for ``orchestrator instances list``: live ones, plus destroyed and vanished ones when asked."""
    if not include_history:
        return live_instances(session)
    return list(session.scalars(select(Instance).order_by(Instance.created_at, Instance.id)))


def ready_instances(session: Session, *, tenant_id: uuid.UUID) -> list[Instance]:
    """The tenant's ready instances, least loaded first (then oldest)."""
    query = (
        select(Instance)
        .where(Instance.tenant_id == tenant_id, Instance.state == InstanceStatus.READY)
        .order_by(Instance.in_flight, Instance.created_at, Instance.id)
    )
    return list(session.scalars(query))


def acquire_slot(session: Session, *, instance_id: uuid.UUID, max_in_flight: int = MAX_IN_FLIGHT) -> bool:
    """Take one batch slot on a ready instance; False when it is full or no longer ready."""
    result = session.execute(
        update(Instance)
        .where(
            Instance.id == instance_id,
            Instance.state == InstanceStatus.READY,
            Instance.in_flight < max_in_flight,
        )
        .values(in_flight=Instance.in_flight + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release_slot(session: Session, *, instance_id: uuid.UUID, busy_at: datetime) -> None:
    """Give a slot back; ``busy_at`` (when the batch ended) restarts the instance's idle clock."""
    session.execute(
        update(Instance)
        .where(Instance.id == instance_id, Instance.in_flight > 0)
        .values(in_flight=Instance.in_flight - 1)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Instance)
        .where(Instance.id == instance_id)
        .where((Instance.last_busy_at.is_(None)) | (Instance.last_busy_at < busy_at))
        .values(last_busy_at=busy_at)
        .execution_options(synchronize_session=False)
    )


def mark_failed(session: Session, *, instance_id: uuid.UUID, reason: str) -> bool:
    """Take a booting or ready instance out of service; the next scheduler tick destroys it and excludes its
    machine. False when it was already on its way out."""
    result = session.execute(
        update(Instance)
        .where(Instance.id == instance_id, Instance.state.in_([InstanceStatus.BOOTING, InstanceStatus.READY]))
        .values(state=InstanceStatus.FAILED, last_error=reason[:2000])
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def enqueue_batches(batch_ids: Iterable[uuid.UUID]) -> int:
    """Send an analyze message for each batch (call after the commit that made them PENDING); returns how many were
    sent. A broker outage is logged by :func:`orchestrator.tasks.app.enqueue`; the reaper sends them later."""
    from orchestrator.tasks.app import enqueue
    from orchestrator.tasks.constants import TASK_ANALYZE_BATCH

    return sum(enqueue(TASK_ANALYZE_BATCH, str(batch_id)) for batch_id in batch_ids)


def waiting_batches(session: Session, *, tenant_id: uuid.UUID, limit: int | None = None) -> list[uuid.UUID]:
    """The tenant's pending batches that an analyze task has already looked at and left waiting (no allowed backend
    was free, or a backend failed), oldest first. Freshly planned ones, whose first message is still queued, are
    not among them."""
    query = (
        select(Batch.id)
        .where(
            Batch.tenant_id == tenant_id,
            Batch.status == BatchStatus.PENDING,
            Batch.last_error.is_not(None),
            Batch.attempts < Batch.max_attempts,
        )
        .order_by(Batch.created_at, Batch.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def enqueue_waiting_batches(session: Session, *, tenant_id: uuid.UUID, limit: int | None = None) -> int:
    """Send the tenant's waiting batches again at once, when one of its instances has just become ready, instead of
    leaving them to the reaper (up to ``limit``, oldest first). Only reads ``session``; returns how many were sent.
    """
    return enqueue_batches(waiting_batches(session, tenant_id=tenant_id, limit=limit))
