"""Storing each tick's per-tenant cloud state, and reading it where batches are routed.

The state of a tenant is rewritten by every tick (a cleared state when nothing limits it). A paused tenant's
unfinished jobs carry the pause line in their ``notices`` under :data:`NOTICE_KEY`, so ``orchestrator status`` and
the API show it; the line is removed again once the tenant is no longer paused.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.db.models import Job, Tenant, TenantCloudState
from orchestrator.enums import JobStatus
from orchestrator.scheduler.model import FallbackReason, Tier
from orchestrator.scheduler.tenant_state import CloudState

NOTICE_KEY = "scheduler"
# A state older than this many ticks is from a scheduler that stopped; it no longer steers batches.
STALE_AFTER_TICKS = 6
_UNFINISHED_JOBS = (JobStatus.OPEN, JobStatus.QUEUED, JobStatus.RUNNING)


def tenant_names(session: Session, tenant_ids: list[str]) -> dict[str, str]:
    """Tenant id (as the scheduler writes it) to the name the CLI takes."""
    ids = [uuid.UUID(t) for t in tenant_ids]
    return {str(i): name for i, name in session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(ids)))}


def store_states(session: Session, states: Mapping[str, CloudState], *, now: datetime) -> None:
    """Write each tenant's state and put (or take away) the pause line on its unfinished jobs."""
    for tenant, state in states.items():
        tenant_id = uuid.UUID(tenant)
        row = session.get(TenantCloudState, tenant_id)
        if row is None:
            row = TenantCloudState(tenant_id=tenant_id)
            session.add(row)
        row.fallback_tier = state.fallback_tier.value if state.fallback_tier else None
        row.reason = state.reason.value if state.reason else None
        row.paused = state.paused
        row.blocked = state.blocked
        row.updated_at = now
        _update_notices(session, tenant_id, state.blocked if state.paused else None)


def _update_notices(session: Session, tenant_id: uuid.UUID, line: str | None) -> None:
    jobs = session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.status.in_(_UNFINISHED_JOBS)).with_for_update()
    )
    for job in jobs:
        if line is not None and job.notices.get(NOTICE_KEY) != line:
            job.notices = {**job.notices, NOTICE_KEY: line}
        elif line is None and NOTICE_KEY in job.notices:
            job.notices = {k: v for k, v in job.notices.items() if k != NOTICE_KEY}


def current_state(session: Session, *, tenant_id: uuid.UUID, now: datetime, tick_s: float) -> CloudState | None:
    """The tenant's state as of the last tick, or None when there is none or it is stale."""
    row = session.get(TenantCloudState, tenant_id)
    if row is None or now - row.updated_at > timedelta(seconds=STALE_AFTER_TICKS * tick_s):
        return None
    return CloudState(
        tenant=str(tenant_id),
        fallback_tier=Tier(row.fallback_tier) if row.fallback_tier else None,
        reason=FallbackReason(row.reason) if row.reason else None,
        paused=row.paused,
        blocked=row.blocked,
    )
