"""The Celery application. Settings make work survive a killed worker: late acks, reject on worker lost,
prefetch 1, and a visibility timeout longer than the hard time limit."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]
from kombu.exceptions import OperationalError as KombuOperationalError

from orchestrator.logs import connect_celery_logging
from orchestrator.settings import Settings, get_settings
from orchestrator.tasks.constants import (
    QUEUE_ANALYZE,
    QUEUE_INGEST,
    QUEUE_MAINTENANCE,
    RECONCILE_INTERVAL_S,
    TASK_ANALYZE_BATCH,
    TASK_FINALIZE_JOB,
    TASK_PLAN_JOB,
    TASK_PREPARE_ASSET,
    TASK_REAP,
    TASK_RECONCILE,
    TASK_SCHEDULER_TICK,
)
from orchestrator.tasks.requests import OrchestratorTask

log = logging.getLogger(__name__)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration for ``settings`` (pure, so the delivery guarantees can be tested)."""
    # The embedded SQLAlchemy transport passes its options to create_engine and has no visibility timeout: the
    # reaper re-sends work whose lease expired instead.
    transport_options: dict[str, Any] = (
        {} if settings.broker_url.startswith("sqla+") else {"visibility_timeout": settings.visibility_timeout_s}
    )
    result_backend = settings.result_backend or (
        f"db+sqlite:///{(settings.data_dir / 'celery-results.sqlite').as_posix()}"
        if settings.broker_url.startswith("sqla+")
        else settings.broker_url
    )
    return {
        "broker_url": settings.broker_url,
        "result_backend": result_backend,
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_hard_time_limit_s,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE_INGEST,
        "task_queues": [Queue(name) for name in (QUEUE_INGEST, QUEUE_ANALYZE, QUEUE_MAINTENANCE)],  # type: ignore[no-untyped-call]
        "task_routes": {
            TASK_PREPARE_ASSET: {"queue": QUEUE_INGEST},
            TASK_PLAN_JOB: {"queue": QUEUE_INGEST},
            TASK_FINALIZE_JOB: {"queue": QUEUE_INGEST},
            TASK_ANALYZE_BATCH: {"queue": QUEUE_ANALYZE},
            TASK_REAP: {"queue": QUEUE_MAINTENANCE},
            TASK_SCHEDULER_TICK: {"queue": QUEUE_MAINTENANCE},
            TASK_RECONCILE: {"queue": QUEUE_MAINTENANCE},
        },
        "beat_schedule": {
            "reap-expired-batches": {"task": TASK_REAP, "schedule": settings.reaper_interval_s},
            # A tick that waited in the queue past the next one is dropped: it would decide on stale state.
            "scheduler-tick": {
                "task": TASK_SCHEDULER_TICK,
                "schedule": settings.scheduler_tick_s,
                "options": {"expires": settings.scheduler_tick_s},
            },
            "reconcile-instances": {
                "task": TASK_RECONCILE,
                "schedule": RECONCILE_INTERVAL_S,
                "options": {"expires": RECONCILE_INTERVAL_S},
            },
        },
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "imports": ["orchestrator.tasks.jobs", "orchestrator.tasks.cloud", "orchestrator.tasks.writeback"],
    }


def create_celery_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from ``settings`` (default: the process settings)."""
    settings = settings or get_settings()
    app = Celery("orchestrator", task_cls=OrchestratorTask)
    app.conf.update(celery_config(settings))
    connect_celery_logging()  # our log format in workers and beat; job/batch ids on every task's records
    return app


celery_app = create_celery_app()


def enqueue(task_name: str, *args: str) -> bool:
    """Send a task by name. A broker outage is logged, not raised: the row is already committed and the reaper
    sends the work again, so a request that stored a file still succeeds."""
    settings = get_settings()
    if settings.broker_url.startswith("sqla+"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # the embedded queue's SQLite file lives there
    try:
        celery_app.send_task(task_name, args=list(args))
    except (KombuOperationalError, OSError) as exc:
        log.warning("could not enqueue %s%s now (%s); the reaper will retry", task_name, args, exc)
        return False
    return True
