"""Cloud capacity tasks run by beat: the scheduler tick and the reconciler.

Delivery is at-least-once; both tasks are idempotent. Each pass reads the database and the provider afresh and acts
only on what it finds; a tick that runs twice rents nothing twice, because a rental is fenced by the tenant's budget
lock and the live rows it counts (see :mod:`orchestrator.cloud.actuator`). Without a provider key both do nothing.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from orchestrator.clock import utcnow
from orchestrator.db.session import get_sessionmaker
from orchestrator.settings import get_settings
from orchestrator.tasks.constants import TASK_RECONCILE, TASK_SCHEDULER_TICK


@shared_task(name=TASK_SCHEDULER_TICK)
def scheduler_tick() -> dict[str, Any]:
    """One scheduler tick: probe booting instances, decide, rent and destroy."""
    from orchestrator.cloud.actuator import tick
    from orchestrator.providers.vast.provider import VastProvider

    settings = get_settings()
    if not settings.vast_api_key:
        return {"skipped": "no provider key configured (ORCH_VAST_API_KEY)"}
    report = tick(get_sessionmaker(), VastProvider.from_settings(settings), now=utcnow(), settings=settings)
    return {
        "aborted": report.aborted,
        "rented": [str(i) for i in report.rented],
        "ready": [str(i) for i in report.became_ready],
        "destroyed": [str(i) for i in report.destroyed],
        "alerts": [str(i) for i in report.alerts],
        "errors": report.errors,
    }


@shared_task(name=TASK_RECONCILE)
def reconcile() -> dict[str, Any]:
    """One reconciler pass: destroy orphans, adopt or abandon unconfirmed creates, mark vanished instances."""
    from orchestrator.cloud.reconciler import reconcile as reconcile_pass
    from orchestrator.providers.vast.provider import VastProvider

    settings = get_settings()
    if not settings.vast_api_key:
        return {"skipped": "no provider key configured (ORCH_VAST_API_KEY)"}
    report = reconcile_pass(get_sessionmaker(), VastProvider.from_settings(settings), now=utcnow(), settings=settings)
    return {
        "aborted": report.aborted,
        "orphans_destroyed": report.orphans_destroyed,
        "adopted": [str(i) for i in report.adopted],
        "abandoned": [str(i) for i in report.abandoned],
        "vanished": [str(i) for i in report.vanished],
        "errors": report.errors,
    }
