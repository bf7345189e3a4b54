"""Which backend runs a batch: the tenant's order over the backends that are available now."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.backends.base import BatchBackend
from orchestrator.enums import Backend
from orchestrator.settings import Settings, get_settings

DEFAULT_ORDER: tuple[Backend, ...] = (Backend.CLOUD, Backend.LOCAL, Backend.IN_PROCESS)


def route(available: dict[Backend, BatchBackend], order: Sequence[Backend] = DEFAULT_ORDER) -> list[BatchBackend]:
    """The available backends in preference order; the caller tries them in turn until one succeeds."""
    return [available[kind] for kind in order if kind in available]


def available_backends(settings: Settings | None = None) -> dict[Backend, BatchBackend]:
    """The backends this process can use now: a local worker when ``local_worker_url`` is set, and in-process."""
    from orchestrator.backends.in_process import InProcessBackend

    settings = settings or get_settings()
    available: dict[Backend, BatchBackend] = {}
    if settings.local_worker_url:
        from orchestrator.backends.local import LocalWorkerBackend

        available[Backend.LOCAL] = LocalWorkerBackend.from_settings(settings)
    available[Backend.IN_PROCESS] = InProcessBackend()
    return available
