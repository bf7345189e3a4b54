"""The orchestrator's structured logs: the worker's JSON formatter and id context (:mod:`gpu_worker.logs`, which
has no torch and no orchestrator dependency), set up from ``ORCH_LOG_FORMAT`` for the API, Celery workers and beat.

Celery: :func:`connect_celery_logging` makes Celery leave logging to us (a ``setup_logging`` receiver) and sets the
ids of each task from its arguments (``task_prerun``: a parameter named ``batch_id``, ``job_id``, ``instance_id``,
``tenant_id``), so task bodies need no logging code. API requests get a ``request_id`` from
:mod:`orchestrator.observability.http_metrics`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery import signals

from gpu_worker.logs import (
    CONTEXT_FIELDS,
    JsonFormatter,
    LogFormat,
    TextFormatter,
    bind_context,
    clear_context,
    configure_logging,
    current_context,
    log_context,
    redact,
    with_log_ids,
)
from orchestrator.settings import Settings, get_settings

__all__ = [
    "CONTEXT_FIELDS",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "bind_context",
    "clear_context",
    "configure_logging",
    "connect_celery_logging",
    "current_context",
    "install_api_logging",
    "log_context",
    "redact",
    "task_log_ids",
    "with_log_ids",
]

# Servers that log on their own loggers; in JSON mode their records go through the root handler instead.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task")


def task_log_ids(parameters: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, str]:
    """The log ids in a task call: each argument whose parameter is named like a context field."""
    bound = dict(zip(parameters, args, strict=False)) | dict(kwargs)
    return {name: str(bound[name]) for name in CONTEXT_FIELDS if bound.get(name) is not None}


def _parameters(function: Callable[..., Any]) -> list[str]:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def _task_started(task: Any = None, args: Sequence[Any] | None = None, kwargs: Any = None, **_: Any) -> None:
    # A pool process or thread runs one task after another: ids of the previous task must not leak into this one.
    clear_context()
    run = getattr(task, "run", None)
    if run is not None:
        bind_context(**task_log_ids(_parameters(run), args or (), kwargs or {}))


def _task_finished(**_: Any) -> None:
    clear_context()


def _setup_celery_logging(loglevel: int | str | None = None, **_: Any) -> None:
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    install_logging(get_settings(), level=level if isinstance(level, int) else logging.INFO)


def connect_celery_logging() -> None:
    """Connect the Celery signal receivers (idempotent): our log format in workers and beat, ids per task."""
    signals.setup_logging.connect(_setup_celery_logging, weak=False, dispatch_uid="orchestrator.logs.setup")
    signals.task_prerun.connect(_task_started, weak=False, dispatch_uid="orchestrator.logs.prerun")
    signals.task_postrun.connect(_task_finished, weak=False, dispatch_uid="orchestrator.logs.postrun")


def install_logging(settings: Settings, *, level: int = logging.INFO) -> None:
    """Configure the root logger in ``settings.log_format``; in JSON mode the servers' own loggers propagate to it,
    so every line of the process is one JSON object."""
    configure_logging(settings.log_format, level=level)
    if LogFormat(settings.log_format) is LogFormat.JSON:
        for name in SERVER_LOGGERS:
            server_logger = logging.getLogger(name)
            server_logger.handlers.clear()
            server_logger.propagate = True


def install_api_logging(settings: Settings) -> None:
    """Logging of the API process in JSON mode; text mode leaves logging as the runner set it up (uvicorn's own
    lines, ``orchestrator up``'s console, a test runner's capture)."""
    if LogFormat(settings.log_format) is LogFormat.JSON:
        install_logging(settings)
