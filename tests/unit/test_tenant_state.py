"""What a tick's warnings and fallbacks mean for a tenant: fall back at once, or pause with a line that says why
and which command resumes the work. Driven by the real policy's actions."""

from __future__ import annotations

from typing import Any

from orchestrator.scheduler.model import BudgetView, FallbackReason, Tier
from orchestrator.scheduler.policy import decide
from orchestrator.scheduler.tenant_state import CloudState, cloud_states
from tests.fixtures.scheduler_factories import instance, offer, policy, snapshot, work

NAMES = {"acme": "acme-studio"}


def states_for(**kwargs: Any) -> dict[str, CloudState]:
    view = snapshot(**kwargs)
    return cloud_states(view, decide(view), names=NAMES)


def test_a_used_up_daily_budget_sends_the_batches_to_the_next_tier_and_names_the_cap() -> None:
    [state] = states_for(
        policies=[policy(daily_cap_usd=5.0, tiers=(Tier.CLOUD, Tier.CPU))],
        pending=[work(gpu_s=5000.0)],
        offers=[offer()],
        budgets=[BudgetView("acme", day_spent_usd=5.0, month_spent_usd=5.0, reserved_usd=0.0)],
    ).values()

    assert state.fallback_tier is Tier.CPU and state.reason is FallbackReason.BUDGET and not state.paused
    assert state.blocked == (
        "running on cpu: the daily budget of $5.00 is used up; "
        "raise it with `orchestrator budget set acme-studio --daily-cap USD`"
    )


def test_a_cloud_only_tenant_past_its_monthly_cap_is_paused_with_the_command_that_resumes_it() -> None:
    [state] = states_for(
        policies=[policy(daily_cap_usd=50.0, monthly_cap_usd=60.0, soft_cap_usd=60.0, tiers=(Tier.CLOUD,))],
        pending=[work(gpu_s=5000.0)],
        offers=[offer()],
        budgets=[BudgetView("acme", day_spent_usd=1.0, month_spent_usd=60.0, reserved_usd=0.0)],
    ).values()

    assert state.paused and state.fallback_tier is None and state.reason is FallbackReason.BUDGET
    assert state.blocked is not None
    assert state.blocked.startswith("paused: the monthly budget of $60.00 is used up; ")
    assert "`orchestrator budget set acme-studio --monthly-cap USD`" in state.blocked
    assert "`orchestrator budget set acme-studio --tiers cloud,cpu`" in state.blocked


def test_no_matching_offer_falls_back_and_a_working_cloud_clears_the_state() -> None:
    [no_offers] = states_for(policies=[policy(tiers=(Tier.CLOUD, Tier.LOCAL))], pending=[work(gpu_s=5000.0)]).values()
    assert no_offers.fallback_tier is Tier.LOCAL and no_offers.reason is FallbackReason.NO_OFFERS

    [served] = states_for(pending=[work(gpu_s=5000.0)], instances=[instance()], offers=[offer()]).values()
    assert served == CloudState("acme")


def test_a_tenant_that_never_allowed_the_cloud_is_not_told_it_fell_back() -> None:
    [state] = states_for(policies=[policy(tiers=(Tier.CPU,))], pending=[work(gpu_s=50.0)]).values()

    assert state == CloudState("acme")
