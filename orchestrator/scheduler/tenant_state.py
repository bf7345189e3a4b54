"""What one tick's Warn and Fallback actions mean for a tenant's batches, as a value the router and users read.

Pure: from the snapshot and the actions of a tick to one :class:`CloudState` per tenant. The actuator stores it;
the router reads it, so that a tenant the cloud cannot serve now (budget used up, no matching offer) falls back to
its next allowed tier at once instead of waiting for a GPU that will not come, or, with no tier after the cloud,
the tenant's jobs say that they are paused, why, and which command resumes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.scheduler.model import (
    Action,
    BudgetView,
    Fallback,
    FallbackReason,
    Snapshot,
    TenantPolicy,
    Tier,
    Warn,
    WarnCode,
)


@dataclass(frozen=True)
class CloudState:
    """Whether the cloud serves a tenant now. ``blocked`` is a user-facing line; None means nothing is wrong."""

    tenant: str
    fallback_tier: Tier | None = None
    reason: FallbackReason | None = None
    paused: bool = False
    blocked: str | None = None


def cloud_states(snapshot: Snapshot, actions: list[Action], *, names: dict[str, str]) -> dict[str, CloudState]:
    """One state per tenant of the snapshot; ``names`` maps a tenant id to the name the CLI takes."""
    states: dict[str, CloudState] = {}
    for tenant, policy in snapshot.tenants.items():
        mine = [a for a in actions if isinstance(a, Warn | Fallback) and a.tenant == tenant]
        codes = {a.code for a in mine if isinstance(a, Warn)}
        fallback = next((a for a in mine if isinstance(a, Fallback)), None)
        name = names.get(tenant, tenant)
        budget = snapshot.budgets.get(tenant, BudgetView(tenant, 0.0, 0.0, 0.0))
        if WarnCode.PAUSED in codes:
            what, fix = _cause(policy, budget, codes, name)
            fallback_fix = f"allow a fallback tier with `orchestrator budget set {name} --tiers cloud,cpu`"
            states[tenant] = CloudState(
                tenant,
                paused=True,
                reason=_reason(codes),
                blocked=f"paused: {what}; {fix + ' or ' if fix else ''}{fallback_fix}",
            )
        elif fallback is not None and fallback.reason is not FallbackReason.CLOUD_NOT_ALLOWED:
            what, fix = _cause(policy, budget, codes, name)
            states[tenant] = CloudState(
                tenant,
                fallback_tier=fallback.tier,
                reason=fallback.reason,
                blocked=f"running on {fallback.tier.value}: {what}" + (f"; {fix}" if fix else ""),
            )
        else:
            states[tenant] = CloudState(tenant)
    return states


def _reason(codes: set[WarnCode]) -> FallbackReason:
    if codes & {WarnCode.HARD_CAP, WarnCode.SOFT_CAP}:
        return FallbackReason.BUDGET
    if WarnCode.NO_OFFERS in codes:
        return FallbackReason.NO_OFFERS
    return FallbackReason.WAITED_TOO_LONG


def _cause(policy: TenantPolicy, budget: BudgetView, codes: set[WarnCode], name: str) -> tuple[str, str]:
    """Why no cloud GPU comes, and the command that changes it ("" when no setting does)."""
    if WarnCode.SOFT_CAP in codes:
        return (
            f"the monthly soft cap of ${policy.soft_cap_usd:.2f} is reached",
            f"raise it with `orchestrator budget set {name} --soft-cap USD`",
        )
    if WarnCode.HARD_CAP in codes:
        day_left = policy.daily_cap_usd - budget.day_spent_usd - budget.reserved_usd
        month_left = policy.monthly_cap_usd - budget.month_spent_usd - budget.reserved_usd
        period, option, cap = (
            ("daily", "--daily-cap", policy.daily_cap_usd)
            if day_left <= month_left
            else ("monthly", "--monthly-cap", policy.monthly_cap_usd)
        )
        return (
            f"the {period} budget of ${cap:.2f} is used up",
            f"raise it with `orchestrator budget set {name} {option} USD`",
        )
    if WarnCode.NO_OFFERS in codes:
        return (
            f"no GPU offer matches the tenant's filters at up to ${policy.max_price_per_h_usd:.2f}/h",
            f"widen them with `orchestrator budget set {name} --max-price USD --gpu MODEL`",
        )
    return f"no cloud GPU was ready within {policy.max_gpu_wait_s:.0f} s", ""
