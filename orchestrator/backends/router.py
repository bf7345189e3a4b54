"""Which backend runs a batch: the tenant's order over the backends that are available now."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.backends.base import BatchBackend
from orchestrator.enums import Backend

DEFAULT_ORDER: tuple[Backend, ...] = (Backend.CLOUD, Backend.LOCAL, Backend.IN_PROCESS)


def route(available: dict[Backend, BatchBackend], order: Sequence[Backend] = DEFAULT_ORDER) -> list[BatchBackend]:
    """The available backends in preference order; the caller tries them in turn until one succeeds."""
    return [available[kind] for kind in order if kind in available]


def available_backends() -> dict[Backend, BatchBackend]:
    """The backends this process can use now. Cloud and local workers join this in later releases."""
    from orchestrator.backends.in_process import InProcessBackend

    return {Backend.IN_PROCESS: InProcessBackend()}
