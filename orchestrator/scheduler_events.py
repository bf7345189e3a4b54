"""The scheduler's decisions per tenant, kept for people: why it rented, destroyed, warned, fell back, or did not rent.

The actuator calls :func:`record_tick` after applying a tick. Explanations come from the pure
:func:`orchestrator.scheduler.explain.explain`. A tenant's event is written only when it differs (kind, reason,
instance) from the tenant's last one, so a steady state costs one row, not one per tick. Events older than
:data:`RETENTION` are deleted in the same transaction (an indexed range delete that usually finds nothing).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Instance, SchedulerEvent, Tenant
from orchestrator.scheduler.explain import EventKind, Explanation, explain
from orchestrator.scheduler.model import Action, Snapshot

log = logging.getLogger(__name__)

RETENTION = timedelta(days=30)
MAX_MESSAGE_CHARS = 2000


def _key(kind: str, reason: str, instance_id: str | None) -> tuple[str, str, str | None]:
    return kind, reason, instance_id


def _tenant_uuid(tenant: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(tenant)
    except ValueError:
        return None


def record(session: Session, explanations: Sequence[Explanation], *, now: datetime) -> list[SchedulerEvent]:
    """Write the explanations that differ from their tenant's last event; returns the rows written."""
    last: dict[uuid.UUID | None, tuple[str, str, str | None] | None] = {}
    written: list[SchedulerEvent] = []
    for explanation in explanations:
        tenant_id = _tenant_uuid(explanation.tenant)
        if tenant_id not in last:
            previous = session.scalar(
                select(SchedulerEvent)
                .where(SchedulerEvent.tenant_id == tenant_id if tenant_id else SchedulerEvent.tenant_id.is_(None))
                .order_by(SchedulerEvent.at.desc(), SchedulerEvent.id.desc())
                .limit(1)
            )
            last[tenant_id] = _key(previous.kind, previous.reason, previous.instance_id) if previous else None
        key = _key(explanation.kind.value, explanation.reason, explanation.instance_id)
        if key == last[tenant_id]:
            continue
        event = SchedulerEvent(
            tenant_id=tenant_id,
            at=now,
            kind=explanation.kind.value,
            reason=explanation.reason[:32],
            message=explanation.message[:MAX_MESSAGE_CHARS],
            instance_id=explanation.instance_id,
        )
        session.add(event)
        written.append(event)
        last[tenant_id] = key
    session.execute(delete(SchedulerEvent).where(SchedulerEvent.at < now - RETENTION))
    session.flush()
    return written


def _with_rented_instances(
    session: Session, explanations: list[Explanation], rented: Sequence[uuid.UUID]
) -> list[Explanation]:
    """Rentals that were made get their instance row's id; decided rentals that were not made are left out (the
    actuator makes one per tenant per tick, and a create may fail; the next tick decides again)."""
    made: dict[tuple[str, str], str] = {}
    if rented:
        for row_id, tenant_id, offer_id in session.execute(
            select(Instance.id, Instance.tenant_id, Instance.offer_id).where(Instance.id.in_(list(rented)))
        ):
            made[(str(tenant_id), offer_id)] = str(row_id)
    kept: list[Explanation] = []
    for explanation in explanations:
        if explanation.kind is EventKind.RENT:
            instance_id = made.get((explanation.tenant, str(explanation.offer_id)))
            if instance_id is None:
                continue
            explanation = replace(explanation, instance_id=instance_id)
        kept.append(explanation)
    return kept


def record_tick(
    session_factory: sessionmaker[Session],
    snapshot: Snapshot,
    actions: Sequence[Action],
    *,
    rented: Sequence[uuid.UUID],
    now: datetime,
) -> int:
    """Explain and record one applied tick; returns how many events were written. A database error is logged and
    swallowed: the record is for people, and must never stop the scheduler."""
    try:
        with session_factory.begin() as session:
            explanations = _with_rented_instances(session, explain(snapshot, actions), rented)
            ids = {u for e in explanations if (u := _tenant_uuid(e.tenant)) is not None}
            # A tenant deleted since the snapshot would fail the foreign key.
            existing = {str(t) for t in session.scalars(select(Tenant.id).where(Tenant.id.in_(ids)))} if ids else set()
            return len(record(session, [e for e in explanations if e.tenant in existing], now=now))
    except SQLAlchemyError as exc:
        log.warning("scheduler events not recorded: %s", exc)
        return 0


def recent_events(session: Session, *, tenant_id: uuid.UUID | None = None, limit: int = 20) -> list[SchedulerEvent]:
    """The newest events first: one tenant's, or every tenant's when ``tenant_id`` is None."""
    query = select(SchedulerEvent).order_by(SchedulerEvent.at.desc(), SchedulerEvent.id.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(SchedulerEvent.tenant_id == tenant_id)
    return list(session.scalars(query))
