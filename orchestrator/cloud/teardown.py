"""Destroying one rented instance: logs kept when it failed, its machine excluded, its money settled.

Destroy, never stop: a stopped Vast.ai instance still bills storage. A destroy that keeps failing puts the row in
the ALERT state (it may still bill) instead of pretending the instance is gone; later passes keep trying.

The batches in flight on an instance that is going away are released at once (back to PENDING, fenced by their
claims) and enqueued after the commit, instead of waiting out their leases.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import budgets
from orchestrator.batching import release_instance_batches
from orchestrator.cloud.instances import enqueue_batches
from orchestrator.db.models import BudgetHold, ExcludedMachine, Instance
from orchestrator.enums import InstanceStatus
from orchestrator.errors import ProviderError
from orchestrator.logs import with_log_ids
from orchestrator.providers.base import Provider

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({InstanceStatus.DESTROYED, InstanceStatus.VANISHED})
LOG_TAIL_LINES = 1000
MAX_LOG_CHARS = 200_000
MAX_ERROR_CHARS = 2000


def settle_row(session: Session, row: Instance, *, now: datetime) -> float:
    """Settle the row's reservation at ``now`` (0 when it was settled already); returns the bill in USD."""
    if session.get(BudgetHold, str(row.id)) is None:
        return 0.0
    return budgets.settle(session, tenant_id=row.tenant_id, instance_id=str(row.id), now=now)


def finish(
    session: Session, row: Instance, *, state: InstanceStatus, now: datetime, error: str | None = None
) -> list[uuid.UUID]:
    """Put the row in a final state, settled, with no batch slot left, no batch still linked to it and no usable
    worker token.

    Returns the batches released back to PENDING; the caller enqueues them (:func:`enqueue_batches`) after commit.
    """
    settle_row(session, row, now=now)
    row.state = state
    row.destroyed_at = now
    row.in_flight = 0
    # The token opened this instance alone and the instance is gone: keep no usable credential for it.
    row.worker_token = ""
    if error is not None:
        row.last_error = error[:MAX_ERROR_CHARS]
    return release_batches(session, row, now=now)


def release_batches(session: Session, row: Instance, *, now: datetime) -> list[uuid.UUID]:
    """Release the batches in flight on ``row``'s instance (see :func:`release_instance_batches`)."""
    return release_instance_batches(
        session, instance_id=row.id, error=f"instance {row.id} went away ({row.state}) mid-batch", now=now
    )


def exclude_machine(session: Session, *, provider: str, machine_id: int, instance_id: uuid.UUID, reason: str) -> None:
    """Keep ``machine_id`` out of later rentals (idempotent)."""
    existing = session.scalars(
        select(ExcludedMachine).where(ExcludedMachine.provider == provider, ExcludedMachine.machine_id == machine_id)
    ).first()
    if existing is None:
        session.add(ExcludedMachine(provider=provider, machine_id=machine_id, reason=reason, instance_id=instance_id))


@with_log_ids  # every line logged while destroying carries the instance id
def destroy_instance(
    session_factory: sessionmaker[Session],
    provider: Provider,
    *,
    instance_id: uuid.UUID,
    now: datetime,
    reason: str,
    exclude: bool = False,
    max_attempts: int = 5,
) -> InstanceStatus:
    """Destroy the row's instance at the provider and settle it; returns the row's state afterwards.

    With ``exclude`` the container log is fetched and stored first and the machine is excluded. A provider error
    counts one failed attempt (ALERT after ``max_attempts``); the row stays live so that the next pass tries again.
    """
    with session_factory.begin() as session:
        row = session.get(Instance, instance_id, with_for_update=True)
        if row is None or row.state in FINAL_STATES:
            return InstanceStatus(row.state) if row is not None else InstanceStatus.DESTROYED
        if row.state != InstanceStatus.ALERT:
            row.state = InstanceStatus.DESTROYING
        row.last_error = row.last_error or reason
        provider_id, machine_id = row.provider_instance_id, row.machine_id
        if exclude:
            exclude_machine(session, provider=provider.name, machine_id=machine_id, instance_id=row.id, reason=reason)
        # No answer worth waiting for comes from an instance being destroyed; its slots cannot be taken any more.
        released = release_batches(session, row, now=now)
    enqueue_batches(released)
    if exclude and provider_id is not None:
        try:
            logs = provider.logs(provider_id, tail=LOG_TAIL_LINES)
        except ProviderError as exc:
            logs = f"(logs unavailable: {exc.message})"
        with session_factory.begin() as session:
            row = session.get(Instance, instance_id)
            if row is not None:
                row.logs = logs[-MAX_LOG_CHARS:]
    if provider_id is not None:
        try:
            provider.destroy(provider_id)
        except ProviderError as exc:
            with session_factory.begin() as session:
                row = session.get(Instance, instance_id)
                assert row is not None
                row.destroy_attempts += 1
                row.last_error = f"destroy failed ({row.destroy_attempts}x): {exc.message}"[:MAX_ERROR_CHARS]
                if row.destroy_attempts >= max_attempts:
                    row.state = InstanceStatus.ALERT
                    log.error("instance %s (%s) could not be destroyed: %s", instance_id, provider_id, exc.message)
                return InstanceStatus(row.state)
    with session_factory.begin() as session:
        row = session.get(Instance, instance_id, with_for_update=True)
        if row is None:
            return InstanceStatus.DESTROYED
        released = []
        if row.state not in FINAL_STATES:
            released = finish(session, row, state=InstanceStatus.DESTROYED, now=now)
        final_state = InstanceStatus(row.state)
    enqueue_batches(released)
    log.info("instance %s (%s) destroyed: %s", instance_id, provider_id, reason)
    return final_state
