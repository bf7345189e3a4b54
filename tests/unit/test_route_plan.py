"""The routing decision: the tenant's tiers in its order, each only when usable, and the CPU held back while a
cloud GPU is on its way and the batch has not waited past the tenant's limit."""

from __future__ import annotations

import pytest

from orchestrator.backends.router import plan_route
from orchestrator.scheduler.model import Tier

ALL = (Tier.CLOUD, Tier.LOCAL, Tier.CPU)


def plan(
    tiers: tuple[Tier, ...] = ALL,
    *,
    cloud_ready: bool = False,
    cloud_possible: bool = False,
    local: bool = False,
    waited_s: float = 0.0,
) -> tuple[Tier, ...]:
    return plan_route(
        tiers,
        cloud_ready=cloud_ready,
        cloud_possible=cloud_possible,
        local_configured=local,
        waited_s=waited_s,
        max_gpu_wait_s=900.0,
    ).tiers


@pytest.mark.parametrize(
    ("tiers", "expected"),
    [
        (ALL, ALL),
        ((Tier.CPU, Tier.LOCAL, Tier.CLOUD), (Tier.CPU, Tier.LOCAL, Tier.CLOUD)),
        ((Tier.LOCAL, Tier.CLOUD), (Tier.LOCAL, Tier.CLOUD)),
        ((Tier.CLOUD,), (Tier.CLOUD,)),
    ],
)
def test_the_tenants_order_is_kept_and_tiers_left_out_are_skipped(
    tiers: tuple[Tier, ...], expected: tuple[Tier, ...]
) -> None:
    assert plan(tiers, cloud_ready=True, cloud_possible=True, local=True) == expected


def test_cloud_counts_only_with_a_free_ready_instance_and_local_only_when_configured() -> None:
    assert plan(cloud_ready=False, local=True) == (Tier.LOCAL, Tier.CPU)
    assert plan(cloud_ready=True, local=False) == (Tier.CLOUD, Tier.CPU)


def test_the_cpu_waits_for_a_coming_gpu_until_the_tenants_limit() -> None:
    waiting = plan_route(
        ALL, cloud_ready=False, cloud_possible=True, local_configured=False, waited_s=899.0, max_gpu_wait_s=900.0
    )
    assert (
        waiting.tiers == ()
        and waiting.waiting_reason is not None
        and "899 s of at most 900 s" in waiting.waiting_reason
    )
    assert plan(cloud_possible=True, waited_s=900.0) == (Tier.CPU,)
    # A local GPU still takes the batch while the cloud one comes; only the CPU is held back.
    assert plan(cloud_possible=True, local=True) == (Tier.LOCAL,)


def test_the_cpu_does_not_wait_when_no_cloud_gpu_can_come() -> None:
    assert plan(cloud_possible=False) == (Tier.CPU,)
    assert plan((Tier.LOCAL, Tier.CPU), cloud_possible=True) == (Tier.CPU,)


def test_nothing_allowed_and_available_gives_a_reason_to_wait() -> None:
    result = plan_route(
        (Tier.CLOUD,), cloud_ready=False, cloud_possible=False, local_configured=True, waited_s=0, max_gpu_wait_s=900
    )
    assert result.tiers == () and result.waiting_reason is not None and "tiers: cloud" in result.waiting_reason
    assert (
        plan_route(
            ALL, cloud_ready=True, cloud_possible=True, local_configured=False, waited_s=0, max_gpu_wait_s=1
        ).waiting_reason
        is None
    )


def test_a_blocked_cloud_lets_the_cpu_run_at_once_and_explains_a_wait_when_nothing_else_may() -> None:
    blocked = "running on cpu: the daily budget of $5.00 is used up"
    fallback = plan_route(
        ALL,
        cloud_ready=False,
        cloud_possible=True,
        local_configured=False,
        waited_s=0,
        max_gpu_wait_s=900,
        cloud_blocked=blocked,
    )
    assert fallback.tiers == (Tier.CPU,) and fallback.waiting_reason is None

    paused = plan_route(
        (Tier.CLOUD,),
        cloud_ready=False,
        cloud_possible=True,
        local_configured=False,
        waited_s=0,
        max_gpu_wait_s=900,
        cloud_blocked="paused: the daily budget of $5.00 is used up",
    )
    assert paused.tiers == () and paused.waiting_reason == "paused: the daily budget of $5.00 is used up"
