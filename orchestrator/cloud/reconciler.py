"""The reconciler: make our rows and the provider's instances agree.

- A labelled instance of this deployment with no live row is an orphan (a crash between create and commit, a row
  given up too early): it is destroyed.
- A REQUESTED row whose create never answered is adopted when its labelled instance shows up, and given up (settled)
  once it is older than the create grace without one.
- A row whose instance is gone from the provider without our destroy is marked VANISHED, settled, and its batch
  slots are freed; the batches that were in flight on it go back to PENDING at once (fenced by their claims, so the
  lost worker's late answer writes nothing) and are enqueued after the commit.
- A failed list call aborts the pass: a failure never reads as "no instances".

Rows are read before the list call and an orphan is checked against the database again before it is destroyed, so
a tick that creates an instance while the pass runs never has it taken for an orphan or for vanished.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.cloud.actuator import label_prefix
from orchestrator.cloud.instances import LIVE_STATES, enqueue_batches, live_instances
from orchestrator.cloud.teardown import finish
from orchestrator.db.models import Instance
from orchestrator.enums import InstanceStatus
from orchestrator.errors import ProviderError
from orchestrator.providers.base import Provider, ProviderInstance
from orchestrator.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    """What one reconciler pass found and did."""

    orphans_destroyed: list[str] = field(default_factory=list)
    adopted: list[uuid.UUID] = field(default_factory=list)
    abandoned: list[uuid.UUID] = field(default_factory=list)
    vanished: list[uuid.UUID] = field(default_factory=list)
    requeued: list[uuid.UUID] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    aborted: str | None = None


@dataclass(frozen=True)
class _Seen:
    id: uuid.UUID
    label: str
    state: InstanceStatus
    provider_instance_id: str | None
    created_at: datetime


def reconcile(
    session_factory: sessionmaker[Session], provider: Provider, *, now: datetime, settings: Settings
) -> ReconcileReport:
    """One reconciliation pass at ``now``."""
    report = ReconcileReport()
    with session_factory.begin() as session:
        rows = [
            _Seen(r.id, r.label, InstanceStatus(r.state), r.provider_instance_id, r.created_at)
            for r in live_instances(session)
        ]
    try:
        listed = provider.list_instances(label_prefix(settings))
    except ProviderError as exc:
        report.aborted = f"list failed, nothing changed: {exc.message}"
        log.warning("reconcile aborted: %s", report.aborted)
        return report
    by_label = {p.label: p for p in listed if p.label is not None}
    listed_ids = {p.id for p in listed}
    create_grace = timedelta(seconds=settings.cloud_create_grace_s)
    vanish_grace = timedelta(seconds=settings.cloud_vanish_grace_s)
    for row in rows:
        if row.provider_instance_id is None:
            found = by_label.get(row.label)
            if found is not None:
                _adopt(session_factory, row, found, report)
            elif now - row.created_at > create_grace:
                _settle_as(session_factory, row, InstanceStatus.DESTROYED, now, "create never confirmed", report)
        elif row.provider_instance_id not in listed_ids and now - row.created_at > vanish_grace:
            if row.state in (InstanceStatus.DESTROYING, InstanceStatus.ALERT):
                # Our destroy went through after all.
                _settle_as(session_factory, row, InstanceStatus.DESTROYED, now, None, report)
            else:
                _settle_as(session_factory, row, InstanceStatus.VANISHED, now, "gone from the provider", report)
    known = {row.label for row in rows}
    for instance in listed:
        if instance.label not in known:
            _destroy_orphan(session_factory, provider, instance, report)
    return report


def _adopt(
    session_factory: sessionmaker[Session], row: _Seen, found: ProviderInstance, report: ReconcileReport
) -> None:
    with session_factory.begin() as session:
        result = session.execute(
            update(Instance)
            .where(
                Instance.id == row.id,
                Instance.state == InstanceStatus.REQUESTED,
                Instance.provider_instance_id.is_(None),
            )
            .values(provider_instance_id=found.id, state=InstanceStatus.BOOTING)
            .execution_options(synchronize_session=False)
        )
    if result.rowcount:  # type: ignore[attr-defined]
        report.adopted.append(row.id)


def _settle_as(
    session_factory: sessionmaker[Session],
    seen: _Seen,
    state: InstanceStatus,
    now: datetime,
    error: str | None,
    report: ReconcileReport,
) -> None:
    with session_factory.begin() as session:
        row = session.get(Instance, seen.id, with_for_update=True)
        # Changed since it was read (a tick adopted, created or destroyed it): leave it to the next pass.
        if row is None or row.state != seen.state or row.provider_instance_id != seen.provider_instance_id:
            return
        released = finish(session, row, state=state, now=now, error=error)
    enqueue_batches(released)
    report.requeued.extend(released)
    if state is InstanceStatus.VANISHED:
        report.vanished.append(seen.id)
        log.warning("instance %s (%s) vanished at the provider", seen.id, seen.provider_instance_id)
    elif seen.provider_instance_id is None:
        report.abandoned.append(seen.id)


def _destroy_orphan(
    session_factory: sessionmaker[Session], provider: Provider, instance: ProviderInstance, report: ReconcileReport
) -> None:
    with session_factory.begin() as session:
        owner = session.scalars(
            select(Instance.id).where(Instance.label == instance.label, Instance.state.in_(sorted(LIVE_STATES)))
        ).first()
    if owner is not None:
        return  # created while this pass ran
    try:
        provider.destroy(instance.id)
    except ProviderError as exc:
        report.errors.append(f"orphan {instance.id} ({instance.label}): destroy failed: {exc.message}")
        return
    report.orphans_destroyed.append(instance.id)
    log.warning("destroyed orphan instance %s (%s)", instance.id, instance.label)
