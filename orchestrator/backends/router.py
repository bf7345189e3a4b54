"""Which backends run a batch: the tenant's tier order over the backends that are available now.

A tenant's policy lists the tiers it allows, in its order (``cloud``, ``local``, ``cpu``); a tier left out is never
used. :func:`plan_route` is the pure decision; :func:`backends_for_batch` reads what it needs from the database and
the settings and builds the backends. The caller tries them in turn until one succeeds.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from orchestrator.backends.base import BatchBackend
from orchestrator.scheduler.model import Tier
from orchestrator.settings import Settings, get_settings

DEFAULT_TIERS: tuple[Tier, ...] = (Tier.CLOUD, Tier.LOCAL, Tier.CPU)
GPU_TIERS = frozenset({Tier.CLOUD, Tier.LOCAL})


@dataclass(frozen=True)
class RoutePlan:
    """The tiers to try now, in order, and why the batch waits (the CPU held back, or nothing allowed is up)."""

    tiers: tuple[Tier, ...]
    waiting_reason: str | None = None


def plan_route(
    tiers: Sequence[Tier],
    *,
    cloud_ready: bool,
    cloud_possible: bool,
    local_configured: bool,
    waited_s: float,
    max_gpu_wait_s: float,
    cloud_blocked: str | None = None,
) -> RoutePlan:
    """The tiers to try for one batch, in the tenant's order.

    ``cloud`` counts only with a ready instance of the tenant that has a free slot (``cloud_ready``), ``local`` only
    with a configured worker. ``cpu`` is held back while a GPU is on its way: the tenant allows the cloud, one can
    come (``cloud_possible``: a provider is configured, or its instances are merely busy), none is free now, and the
    batch has waited less than ``max_gpu_wait_s`` seconds; the CPU is tens of times slower than that GPU.
    ``cloud_blocked`` is the scheduler's word that no cloud GPU is coming for this tenant now (its budget is used
    up, no offer matches): the CPU is not held back then, and it is the waiting reason when nothing else may run.
    When nothing is chosen, ``waiting_reason`` says why.
    """
    chosen: list[Tier] = []
    waiting: str | None = None
    cloud_possible = cloud_possible and cloud_blocked is None
    for tier in dict.fromkeys(tiers):
        if (tier is Tier.CLOUD and cloud_ready) or (tier is Tier.LOCAL and local_configured):
            chosen.append(tier)
        elif tier is Tier.CPU:
            if Tier.CLOUD in tiers and cloud_possible and not cloud_ready and waited_s < max_gpu_wait_s:
                waiting = (
                    f"waiting for a cloud GPU ({waited_s:.0f} s of at most {max_gpu_wait_s:.0f} s) "
                    "before falling back to the CPU"
                )
            else:
                chosen.append(tier)
    if not chosen and waiting is None and cloud_blocked is not None:
        waiting = cloud_blocked
    if not chosen and waiting is None:
        allowed = ", ".join(tier.value for tier in tiers) or "none"
        waiting = f"no allowed backend is available now (tiers: {allowed}); waiting for one"
    return RoutePlan(tiers=tuple(chosen), waiting_reason=waiting)


def build_backends(plan: RoutePlan, *, tenant_id: uuid.UUID | None, settings: Settings) -> list[BatchBackend]:
    """The backends of a plan: the tenant's cloud instances, each configured local worker, then in-process."""
    backends: list[BatchBackend] = []
    for tier in plan.tiers:
        if tier is Tier.CLOUD and tenant_id is not None:
            from orchestrator.backends.cloud import CloudBackend

            backends.append(CloudBackend.from_settings(settings, tenant_id=tenant_id))
        elif tier is Tier.LOCAL:
            from orchestrator.backends.local import LocalWorkerBackend

            backends.extend(LocalWorkerBackend.from_settings(settings))
        elif tier is Tier.CPU:
            from orchestrator.backends.in_process import InProcessBackend

            backends.append(InProcessBackend())
    return backends


def backends_for_batch(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    queued_at: datetime,
    now: datetime,
    settings: Settings | None = None,
) -> tuple[list[BatchBackend], RoutePlan]:
    """The backends to try for a batch of ``tenant_id`` queued at ``queued_at``, in the tenant's order, and the plan.

    An empty list with ``plan.waiting_reason`` set means: leave the batch queued and ask again later.
    """
    from orchestrator.budgets import get_policy
    from orchestrator.cloud.cloud_states import current_state
    from orchestrator.cloud.instances import MAX_IN_FLIGHT, ready_instances

    settings = settings or get_settings()
    policy = get_policy(session, tenant_id=tenant_id)
    state = current_state(session, tenant_id=tenant_id, now=now, tick_s=settings.scheduler_tick_s)
    ready = ready_instances(session, tenant_id=tenant_id) if Tier.CLOUD in policy.tiers else []
    plan = plan_route(
        policy.tiers,
        cloud_ready=any(instance.in_flight < MAX_IN_FLIGHT for instance in ready),
        # A busy instance frees a slot within a batch's time; a configured provider can rent one.
        cloud_possible=bool(ready) or (bool(settings.vast_api_key) and policy.max_instances > 0),
        local_configured=bool(settings.all_local_worker_urls),
        waited_s=max(0.0, (now - queued_at).total_seconds()),
        max_gpu_wait_s=policy.max_gpu_wait_s,
        cloud_blocked=state.blocked if state is not None else None,
    )
    return build_backends(plan, tenant_id=tenant_id, settings=settings), plan


def available_backends(settings: Settings | None = None) -> list[BatchBackend]:
    """The backends of the default order with no tenant: each configured local worker, then in-process."""
    settings = settings or get_settings()
    plan = plan_route(
        DEFAULT_TIERS,
        cloud_ready=False,
        cloud_possible=False,
        local_configured=bool(settings.all_local_worker_urls),
        waited_s=0.0,
        max_gpu_wait_s=0.0,
    )
    return build_backends(plan, tenant_id=None, settings=settings)
