"""Why the scheduler did what it did, per tenant, in words a user reads: pure, from a Snapshot and decide()'s actions.

Each rental and destroy gets its own explanation. Besides those, a tenant gets at most one *status* per tick: why
its work goes to another tier (fallback), what limits it (warn), or, while work is pending and nothing was rented,
why not: it waits (for the scale-up wait, for a booting instance) or holds (at ``max_instances``, the running
instances suffice, a further one would not pay off). A status deduces its cause from what decide() left out, using
the same quantities as :mod:`orchestrator.scheduler.policy`; it never changes a decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.scheduler.ledger import reservation_usd
from orchestrator.scheduler.model import (
    BOOTING_STATES,
    Action,
    BudgetView,
    Destroy,
    DestroyReason,
    Fallback,
    FallbackReason,
    InstanceState,
    InstanceView,
    OfferView,
    PendingWork,
    Rent,
    RentReason,
    Snapshot,
    TenantPolicy,
    Tier,
    Warn,
    WarnCode,
)
from orchestrator.scheduler.offers import RankedOffer, Rejection, rank_offers, rejection


class EventKind(StrEnum):
    """What kind of scheduler decision an explanation is about."""

    RENT = "rent"
    DESTROY = "destroy"
    WARN = "warn"
    FALLBACK = "fallback"
    # Work waits for a GPU that is coming (the scale-up wait, a booting instance).
    WAIT = "wait"
    # No further instance is rented although work is pending.
    HOLD = "hold"


class HoldReason(StrEnum):
    """Why nothing was rented while a tenant had pending work (reason codes of WAIT and HOLD)."""

    BELOW_THRESHOLD = "below_threshold"
    BOOTING = "booting"
    ENOUGH_CAPACITY = "enough_capacity"
    NOT_WORTH_IT = "not_worth_it"
    MAX_INSTANCES = "max_instances"


class NoOfferReason(StrEnum):
    """A refinement of ``WarnCode.NO_OFFERS``: offers matched everything but the price ceiling."""

    PRICE_CEILING = "price_ceiling"


@dataclass(frozen=True)
class Explanation:
    """One decision about a tenant: ``reason`` is a stable code (a RentReason, DestroyReason, WarnCode,
    FallbackReason or HoldReason value), ``message`` one sentence for people."""

    tenant: str
    kind: EventKind
    reason: str
    message: str
    instance_id: str | None = None
    offer_id: int | None = None


def explain(snapshot: Snapshot, actions: Sequence[Action]) -> list[Explanation]:
    """Every decision of the tick: per tenant (in name order) its destroys, its rentals, then its status if any."""
    tenants = sorted({a.tenant for a in actions} | set(snapshot.tenants))
    statuses = tenant_statuses(snapshot, actions)
    explained: list[Explanation] = []
    for tenant in tenants:
        policy = snapshot.tenants.get(tenant)
        for action in actions:
            if action.tenant != tenant:
                continue
            if isinstance(action, Destroy):
                explained.append(_destroyed(snapshot, policy, action))
            elif isinstance(action, Rent) and policy is not None:
                explained.append(_rented(snapshot, policy, action))
        if tenant in statuses:
            explained.append(statuses[tenant])
    return explained


def tenant_statuses(snapshot: Snapshot, actions: Sequence[Action]) -> dict[str, Explanation]:
    """Per tenant of the snapshot, the one status of this tick; tenants with nothing to explain are left out."""
    statuses: dict[str, Explanation] = {}
    for tenant, policy in sorted(snapshot.tenants.items()):
        mine = [a for a in actions if a.tenant == tenant]
        status = _status(snapshot, policy, mine, actions)
        if status is not None:
            statuses[tenant] = status
    return statuses


def _usd(amount: float) -> str:
    return f"${amount:,.2f}"


def _s(seconds: float) -> str:
    return f"{seconds:,.0f} s"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _rented(snapshot: Snapshot, policy: TenantPolicy, rent: Rent) -> Explanation:
    pending = snapshot.pending.get(rent.tenant, PendingWork(rent.tenant, 0.0, 0, 0.0))
    what = f"rented a {rent.gpu_name} at {_usd(rent.price_per_h_usd)}/h (reserved {_usd(rent.reservation_usd)})"
    if rent.reason is RentReason.MIN_INSTANCES:
        why = f"to keep the minimum of {_plural(policy.min_instances, 'instance')} running"
    elif rent.reason is RentReason.BACKLOG:
        why = (
            f"for a backlog of {pending.gpu_s:,.0f} GPU-s in {_plural(pending.batches, 'batch')}, enough to keep "
            f"another instance busy (threshold {policy.scale_up_threshold_gpu_s:,.0f} GPU-s)"
        )
    else:
        why = (
            f"because the oldest batch waited {_s(pending.oldest_wait_s)}, more than the scale-up wait of "
            f"{_s(policy.scale_up_wait_s)}"
        )
    return Explanation(rent.tenant, EventKind.RENT, rent.reason.value, f"{what} {why}.", offer_id=rent.offer_id)


def _destroyed(snapshot: Snapshot, policy: TenantPolicy | None, destroy: Destroy) -> Explanation:
    inst = next((i for i in snapshot.instances if i.instance_id == destroy.instance_id), None)
    what = f"destroyed the {inst.gpu_name} instance" if inst is not None else "destroyed an instance"
    reason = destroy.reason
    if reason is DestroyReason.IDLE and policy is not None:
        why = f"it was idle for more than the idle timeout of {_s(policy.idle_timeout_s)}"
    elif reason is DestroyReason.HARD_CAP:
        why = "its next charges would cross the tenant's hard cap"
    elif reason is DestroyReason.BOOT_TIMEOUT and policy is not None:
        why = f"it was still booting after {_s(policy.boot_deadline_s)}; its machine is excluded"
    elif reason is DestroyReason.BROKEN:
        state = f" ({inst.state.value})" if inst is not None else ""
        why = f"the provider reports it broken{state}; its machine is excluded"
    elif reason is DestroyReason.OVER_MAX and policy is not None:
        why = f"the tenant allows at most {_plural(policy.max_instances, 'instance')}"
    elif reason is DestroyReason.NO_POLICY:
        why = "its tenant has no scheduling policy (disabled or removed)"
    else:
        why = reason.value.replace("_", " ")
    return Explanation(
        destroy.tenant, EventKind.DESTROY, reason.value, f"{what}: {why}.", instance_id=destroy.instance_id
    )


def _status(
    snapshot: Snapshot, policy: TenantPolicy, mine: list[Action], actions: Sequence[Action]
) -> Explanation | None:
    tenant = policy.tenant
    warns = {a.code: a for a in mine if isinstance(a, Warn)}
    fallback = next((a for a in mine if isinstance(a, Fallback)), None)
    if fallback is not None:
        if fallback.reason is FallbackReason.CLOUD_NOT_ALLOWED:
            cause = "the cloud is not among the tenant's allowed tiers"
        elif fallback.reason is FallbackReason.WAITED_TOO_LONG:
            waited = snapshot.pending.get(tenant, PendingWork(tenant, 0.0, 0, 0.0)).oldest_wait_s
            cause = (
                f"no cloud GPU was ready within the longest GPU wait of {_s(policy.max_gpu_wait_s)} "
                f"(the oldest batch waited {_s(waited)})"
            )
        else:
            cause = _limit(snapshot, policy, set(warns), actions)
        message = f"batches run on the {_tier_name(fallback.tier)} instead of a rented GPU: {cause}."
        return Explanation(tenant, EventKind.FALLBACK, fallback.reason.value, message)
    if WarnCode.PAUSED in warns:
        cause = _limit(snapshot, policy, set(warns), actions) if len(warns) > 1 else _paused_cause(warns)
        message = f"work is paused: {cause}, and no tier after the cloud is allowed."
        return Explanation(tenant, EventKind.WARN, WarnCode.PAUSED.value, message)
    if warns:
        code = next(c for c in (WarnCode.HARD_CAP, WarnCode.SOFT_CAP, WarnCode.NO_OFFERS) if c in warns)
        reason: str = code.value
        if code is WarnCode.NO_OFFERS and _price_is_the_limit(snapshot, policy):
            reason = NoOfferReason.PRICE_CEILING.value
        message = _limit(snapshot, policy, set(warns), actions)
        if any(isinstance(a, Destroy) and a.reason is DestroyReason.HARD_CAP for a in mine):
            message += "; its instances were destroyed"
        return Explanation(tenant, EventKind.WARN, reason, f"no new rentals: {message}.")
    pending = snapshot.pending.get(tenant)
    if pending is None or pending.batches == 0 or any(isinstance(a, Rent) for a in mine):
        return None
    if Tier.CLOUD not in policy.tiers:
        return None  # decide() always says so with a Fallback or a pause; nothing else to add
    return _why_not_rented(snapshot, policy, pending, mine, actions)


def _paused_cause(warns: dict[WarnCode, Warn]) -> str:
    message = warns[WarnCode.PAUSED].message
    if "cloud_not_allowed" in message:
        return "the cloud is not among the tenant's allowed tiers"
    if "waited_too_long" in message:
        return "no cloud GPU was ready within the longest GPU wait"
    return message.removeprefix("paused: ").split(",", 1)[0].replace("_", " ")


def _tier_name(tier: Tier) -> str:
    return {Tier.CLOUD: "cloud", Tier.LOCAL: "local GPU worker", Tier.CPU: "CPU"}[tier]


def _limit(snapshot: Snapshot, policy: TenantPolicy, codes: set[WarnCode], actions: Sequence[Action]) -> str:
    """The money or market limit behind a warning, with the figures that show it."""
    budget = snapshot.budgets.get(policy.tenant, BudgetView(policy.tenant, 0.0, 0.0, 0.0))
    if WarnCode.HARD_CAP in codes:
        day_left = policy.daily_cap_usd - budget.day_spent_usd - budget.reserved_usd
        month_left = policy.monthly_cap_usd - budget.month_spent_usd - budget.reserved_usd
        if day_left <= month_left:
            return (
                f"the daily hard cap of {_usd(policy.daily_cap_usd)} is reached (spent today "
                f"{_usd(budget.day_spent_usd)}, reserved {_usd(budget.reserved_usd)})"
            )
        return (
            f"the monthly hard cap of {_usd(policy.monthly_cap_usd)} is reached (spent this month "
            f"{_usd(budget.month_spent_usd)}, reserved {_usd(budget.reserved_usd)})"
        )
    if WarnCode.SOFT_CAP in codes:
        ranked = _ranked(snapshot, policy, actions)
        rental = (
            f"; a rental reserves {_usd(reservation_usd(ranked[0].offer.total_per_h_usd, policy.min_runtime_s))}"
            if ranked
            else ""
        )
        return (
            f"the monthly soft cap of {_usd(policy.soft_cap_usd)} is reached (spent this month "
            f"{_usd(budget.month_spent_usd)}, reserved {_usd(budget.reserved_usd)}{rental})"
        )
    if WarnCode.NO_OFFERS in codes:
        if _price_is_the_limit(snapshot, policy):
            cheapest = min(
                o.total_per_h_usd for o in snapshot.offers if _rejection(snapshot, policy, o) is Rejection.PRICE
            )
            return (
                f"matching offers cost {_usd(cheapest)}/h or more, above the ceiling of "
                f"{_usd(policy.max_price_per_h_usd)}/h per instance"
            )
        gpus = ", ".join(policy.filters.gpu_names) or "any GPU"
        return f"no offer of {gpus} matches the tenant's filters at up to {_usd(policy.max_price_per_h_usd)}/h"
    return "the cloud cannot serve the tenant now"


def _rejection(snapshot: Snapshot, policy: TenantPolicy, offer: OfferView) -> Rejection | None:
    return rejection(
        offer,
        filters=policy.filters,
        max_price_per_h_usd=policy.max_price_per_h_usd,
        excluded_machines=snapshot.excluded_machines,
        throughput=snapshot.throughput,
    )


def _price_is_the_limit(snapshot: Snapshot, policy: TenantPolicy) -> bool:
    """No offer is acceptable, but some fail only on the price ceiling (the last check)."""
    verdicts = [_rejection(snapshot, policy, o) for o in snapshot.offers]
    return None not in verdicts and Rejection.PRICE in verdicts


def _ranked(snapshot: Snapshot, policy: TenantPolicy, actions: Sequence[Action]) -> list[RankedOffer]:
    """The offers decide() would consider for the tenant, less those this tick's rentals took."""
    taken = {a.offer_id for a in actions if isinstance(a, Rent)}
    return [
        r
        for r in rank_offers(
            snapshot.offers,
            filters=policy.filters,
            max_price_per_h_usd=policy.max_price_per_h_usd,
            excluded_machines=snapshot.excluded_machines,
            throughput=snapshot.throughput,
        )
        if r.offer.offer_id not in taken
    ]


def _why_not_rented(
    snapshot: Snapshot, policy: TenantPolicy, pending: PendingWork, mine: list[Action], actions: Sequence[Action]
) -> Explanation:
    """decide() rented nothing, warned nothing and fell back nowhere although work is pending: say which of its
    conditions held it back."""
    tenant = policy.tenant
    destroyed = {a.instance_id for a in mine if isinstance(a, Destroy)}
    live = [i for i in snapshot.instances if i.tenant == tenant and i.instance_id not in destroyed]
    backlog = f"a backlog of {pending.gpu_s:,.0f} GPU-s in {_plural(pending.batches, 'batch')}"
    if len(live) >= policy.max_instances:
        return Explanation(
            tenant,
            EventKind.HOLD,
            HoldReason.MAX_INSTANCES.value,
            f"not renting: {_plural(len(live), 'instance')} of at most {policy.max_instances} are running for "
            f"{backlog}.",
        )
    ranked = _ranked(snapshot, policy, actions)
    speed_of = snapshot.throughput.speed
    capacity = sum(speed_of(i.gpu_name) for i in live)
    share = _share(snapshot, pending, capacity, ranked)
    if share >= policy.scale_up_threshold_gpu_s and ranked:
        return Explanation(
            tenant,
            EventKind.HOLD,
            HoldReason.NOT_WORTH_IT.value,
            f"not renting another instance for {backlog}: with its boot and idle time it would cost more than "
            f"{policy.max_overhead_ratio:.0%} above the best price per image.",
        )
    if capacity <= 0.0:
        return Explanation(
            tenant,
            EventKind.WAIT,
            HoldReason.BELOW_THRESHOLD.value,
            f"waiting: {backlog} is below the scale-up threshold of {policy.scale_up_threshold_gpu_s:,.0f} GPU-s; "
            f"one instance is rented once the oldest batch has waited {_s(policy.scale_up_wait_s)} "
            f"(now {_s(pending.oldest_wait_s)}).",
        )
    booting = [i for i in live if i.state in BOOTING_STATES]
    if booting and not any(i.state is InstanceState.READY for i in live):
        return Explanation(
            tenant,
            EventKind.WAIT,
            HoldReason.BOOTING.value,
            f"waiting for {_plural(len(booting), 'instance')} to boot ({_gpus(booting)}) for {backlog}.",
        )
    return Explanation(
        tenant,
        EventKind.HOLD,
        HoldReason.ENOUGH_CAPACITY.value,
        f"not renting: the {_plural(len(live), 'running instance')} ({_gpus(live)}) will finish {backlog} before "
        f"another would get {policy.scale_up_threshold_gpu_s:,.0f} GPU-s of work.",
    )


def _gpus(instances: Sequence[InstanceView]) -> str:
    names = sorted({i.gpu_name for i in instances})
    return ", ".join(names)


def _share(snapshot: Snapshot, pending: PendingWork, capacity: float, ranked: Sequence[RankedOffer]) -> float:
    """The work a further instance would get, as decide() estimates it (``policy._wants_another``)."""
    speed = snapshot.throughput.speed(ranked[0].offer.gpu_name) if ranked else 1.0
    if capacity <= 0.0:
        return pending.gpu_s
    return (pending.gpu_s - capacity * snapshot.expected_boot_s) * speed / (capacity + speed)
