"""The scheduler policy: one pure function from a Snapshot to the actions of this tick.

Per tenant, in this order: destroy broken instances and boots past their deadline (excluding their machines);
destroy instances whose accrual would cross a hard cap within the next tick; destroy instances idle past the idle
timeout (keeping ``min_instances``) and any beyond ``max_instances``; then rent while a further instance would get
at least ``scale_up_threshold_gpu_s`` of work, within the soft and hard caps; and fall back to the next tier when the
cloud is not allowed, not affordable, not available, or a batch has waited past ``max_gpu_wait_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from orchestrator.scheduler.ledger import reservation_usd
from orchestrator.scheduler.model import (
    BOOTING_STATES,
    BROKEN_STATES,
    SECONDS_PER_HOUR,
    Action,
    BudgetView,
    Destroy,
    DestroyReason,
    Fallback,
    FallbackReason,
    InstanceState,
    InstanceView,
    PendingWork,
    Rent,
    RentReason,
    Snapshot,
    TenantPolicy,
    Tier,
    Warn,
    WarnCode,
)
from orchestrator.scheduler.offers import RankedOffer, rank_offers

# Half the ledger's resolution (one micro-dollar): float noise in a view must not destroy an instance at the cap.
MONEY_EPSILON_USD = 0.5e-6


@dataclass(frozen=True)
class _Money:
    """What the tenant may still commit: the tighter hard cap and the soft cap, after this tick's reservations."""

    hard_remaining_usd: float
    soft_remaining_usd: float


def decide(snapshot: Snapshot) -> list[Action]:
    """The actions of one tick; deterministic for a given snapshot (tenants in name order)."""
    actions: list[Action] = [
        Destroy(inst.instance_id, inst.tenant, inst.machine_id, DestroyReason.NO_POLICY)
        for inst in snapshot.instances
        if inst.tenant not in snapshot.tenants
    ]
    taken_offers: set[int] = set()
    for tenant in sorted(snapshot.tenants):
        policy = snapshot.tenants[tenant]
        instances = [inst for inst in snapshot.instances if inst.tenant == tenant]
        actions.extend(_decide_tenant(snapshot, policy, instances, taken_offers))
    return actions


def _decide_tenant(
    snapshot: Snapshot, policy: TenantPolicy, instances: list[InstanceView], taken_offers: set[int]
) -> list[Action]:
    actions: list[Action] = []
    live: list[InstanceView] = []
    for inst in instances:
        reason = _failure(snapshot, policy, inst)
        if reason is None:
            live.append(inst)
        else:
            actions.append(Destroy(inst.instance_id, inst.tenant, inst.machine_id, reason, exclude_machine=True))

    budget = snapshot.budgets.get(policy.tenant, BudgetView(policy.tenant, 0.0, 0.0, 0.0))
    hard_remaining = min(policy.daily_cap_usd - budget.day_spent_usd, policy.monthly_cap_usd - budget.month_spent_usd)
    hard_remaining -= budget.reserved_usd
    live, over_cap = _enforce_hard_cap(live, hard_remaining, snapshot.tick_s)
    actions.extend(Destroy(i.instance_id, i.tenant, i.machine_id, DestroyReason.HARD_CAP) for i in over_cap)
    if over_cap:
        actions.append(Warn(policy.tenant, WarnCode.HARD_CAP, "hard cap reached: instances destroyed"))

    pending = snapshot.pending.get(policy.tenant, PendingWork(policy.tenant, 0.0, 0, 0.0))
    live, surplus = _scale_down(snapshot, policy, live, pending)
    actions.extend(surplus)

    money = _Money(
        hard_remaining_usd=hard_remaining - _unheld_accrual_usd(live, snapshot.tick_s),
        soft_remaining_usd=policy.soft_cap_usd - budget.month_spent_usd - budget.reserved_usd,
    )
    actions.extend(_scale_up_or_fall_back(snapshot, policy, live, pending, money, taken_offers))
    return actions


def _failure(snapshot: Snapshot, policy: TenantPolicy, inst: InstanceView) -> DestroyReason | None:
    return failure_reason(snapshot.now, policy, inst)


def failure_reason(now: datetime, policy: TenantPolicy, inst: InstanceView) -> DestroyReason | None:
    """Why ``inst`` is to be destroyed as a failure (broken, or booting past its deadline), or None."""
    if inst.state in BROKEN_STATES:
        return DestroyReason.BROKEN
    age_s = (now - inst.created_at).total_seconds()
    if inst.state in BOOTING_STATES and age_s > policy.boot_deadline_s:
        return DestroyReason.BOOT_TIMEOUT
    return None


def _unheld_accrual_usd(instances: list[InstanceView], tick_s: float) -> float:
    """What the next tick's accrual takes from the remaining budget once reservations are used up."""
    return sum(max(0.0, i.price_per_h_usd * tick_s / SECONDS_PER_HOUR - i.hold_left_usd) for i in instances)


def _enforce_hard_cap(
    live: list[InstanceView], hard_remaining_usd: float, tick_s: float
) -> tuple[list[InstanceView], list[InstanceView]]:
    """Keep the instances whose next tick fits under the hard caps; idle ones go first, then the dearest."""
    order = sorted(live, key=lambda i: (i.in_flight_batches > 0, -i.price_per_h_usd, i.instance_id))
    destroyed: list[InstanceView] = []
    while order and _unheld_accrual_usd(order, tick_s) > hard_remaining_usd + MONEY_EPSILON_USD:
        destroyed.append(order.pop(0))
    kept = [i for i in live if i not in destroyed]
    return kept, destroyed


def _idle_since(inst: InstanceView) -> float:
    stamp = inst.last_busy_at or inst.ready_at
    return stamp.timestamp() if stamp is not None else float("inf")


def _scale_down(
    snapshot: Snapshot, policy: TenantPolicy, live: list[InstanceView], pending: PendingWork
) -> tuple[list[InstanceView], list[Action]]:
    now_ts = snapshot.now.timestamp()
    idle = [
        i
        for i in live
        if i.state == InstanceState.READY
        and i.in_flight_batches == 0
        and pending.batches == 0
        and now_ts - _idle_since(i) >= policy.idle_timeout_s
    ]
    # Of the idle ones, the least images per dollar go first.
    idle.sort(key=lambda i: (snapshot.throughput.speed(i.gpu_name) / max(i.price_per_h_usd, 1e-9), i.instance_id))
    removable = max(0, len(live) - policy.min_instances)
    doomed = idle[:removable]
    actions: list[Action] = [Destroy(i.instance_id, i.tenant, i.machine_id, DestroyReason.IDLE) for i in doomed]
    kept = [i for i in live if i not in doomed]
    if len(kept) > policy.max_instances:
        # Idle first, then booting (no work lost), then the youngest.
        excess_order = sorted(
            kept, key=lambda i: (i.in_flight_batches > 0, i.state == InstanceState.READY, -i.created_at.timestamp())
        )
        excess = excess_order[: len(kept) - policy.max_instances]
        actions.extend(Destroy(i.instance_id, i.tenant, i.machine_id, DestroyReason.OVER_MAX) for i in excess)
        kept = [i for i in kept if i not in excess]
    return kept, actions


def _usd_per_ref_s(price_per_h_usd: float, speed: float) -> float:
    return price_per_h_usd / SECONDS_PER_HOUR / speed if speed > 0.0 else float("inf")


def _wants_another(
    snapshot: Snapshot,
    policy: TenantPolicy,
    live: tuple[float, int],
    pending: PendingWork,
    candidate: RankedOffer | None,
    best_usd_per_ref_s: float,
) -> RentReason | None:
    """Whether one more instance, from ``candidate``, pays for its boot and idle tail. ``live``: (speed, count)."""
    capacity, count = live
    if count >= policy.max_instances:
        return None
    if count < policy.min_instances:
        return RentReason.MIN_INSTANCES
    if pending.batches == 0:
        return None
    speed = snapshot.throughput.speed(candidate.offer.gpu_name) if candidate else 1.0
    if capacity > 0.0:
        # The instances we have drain work while the new one boots; it then shares the rest by speed.
        share = (pending.gpu_s - capacity * snapshot.expected_boot_s) * speed / (capacity + speed)
    else:
        share = pending.gpu_s
    if share >= policy.scale_up_threshold_gpu_s and (
        candidate is None or _pays_off(snapshot, policy, candidate, share, best_usd_per_ref_s)
    ):
        return RentReason.BACKLOG
    if capacity <= 0.0 and pending.oldest_wait_s >= policy.scale_up_wait_s:
        return RentReason.WAITING
    return None


def _pays_off(
    snapshot: Snapshot, policy: TenantPolicy, candidate: RankedOffer, share_gpu_s: float, best_usd_per_ref_s: float
) -> bool:
    """The instance's expected bill is within ``max_overhead_ratio`` of its share of work at the best price."""
    offer = candidate.offer
    speed = snapshot.throughput.speed(offer.gpu_name)
    busy_s = share_gpu_s / speed
    bill_usd = (busy_s + snapshot.expected_boot_s + policy.idle_timeout_s) * offer.total_per_h_usd / SECONDS_PER_HOUR
    return bill_usd <= (1.0 + policy.max_overhead_ratio) * share_gpu_s * best_usd_per_ref_s


def _scale_up_or_fall_back(
    snapshot: Snapshot,
    policy: TenantPolicy,
    live: list[InstanceView],
    pending: PendingWork,
    money: _Money,
    taken_offers: set[int],
) -> list[Action]:
    fallback_tier = next((t for t in policy.tiers if t != Tier.CLOUD), None)
    has_work = pending.batches > 0
    if Tier.CLOUD not in policy.tiers:
        return _fallback(policy, fallback_tier, FallbackReason.CLOUD_NOT_ALLOWED) if has_work else []
    if not has_work and len(live) >= policy.min_instances:
        return []

    ranked = [
        r
        for r in rank_offers(
            snapshot.offers,
            filters=policy.filters,
            max_price_per_h_usd=policy.max_price_per_h_usd,
            excluded_machines=snapshot.excluded_machines,
            throughput=snapshot.throughput,
        )
        if r.offer.offer_id not in taken_offers
    ]
    speed_of = snapshot.throughput.speed
    best_usd_per_ref_s = min(
        [_usd_per_ref_s(r.offer.total_per_h_usd, speed_of(r.offer.gpu_name)) for r in ranked[:1]]
        + [_usd_per_ref_s(i.price_per_h_usd, speed_of(i.gpu_name)) for i in live],
        default=float("inf"),
    )
    actions: list[Action] = []
    capacity = sum(speed_of(i.gpu_name) for i in live)
    count = len(live)
    hard_left, soft_left = money.hard_remaining_usd, money.soft_remaining_usd
    blocked: FallbackReason | None = None
    while True:
        reason = _wants_another(
            snapshot, policy, (capacity, count), pending, ranked[0] if ranked else None, best_usd_per_ref_s
        )
        if reason is None:
            break
        if not ranked:
            actions.append(Warn(policy.tenant, WarnCode.NO_OFFERS, "no offer matches the tenant's filters"))
            blocked = FallbackReason.NO_OFFERS
            break
        choice = _affordable(ranked, policy, hard_left, soft_left, snapshot.tick_s)
        if choice is None:
            soft_bound = soft_left < hard_left
            code = WarnCode.SOFT_CAP if soft_bound else WarnCode.HARD_CAP
            actions.append(Warn(policy.tenant, code, f"{code.value} reached: no new rentals"))
            blocked = FallbackReason.BUDGET
            break
        offer = choice.offer
        reservation = reservation_usd(offer.total_per_h_usd, policy.min_runtime_s)
        actions.append(
            Rent(
                policy.tenant,
                offer.offer_id,
                offer.machine_id,
                offer.gpu_name,
                offer.total_per_h_usd,
                reservation,
                reason,
            )
        )
        taken_offers.add(offer.offer_id)
        ranked = [r for r in ranked if r.offer.offer_id != offer.offer_id and r.offer.machine_id != offer.machine_id]
        hard_left -= reservation
        soft_left -= reservation
        capacity += speed_of(offer.gpu_name)
        count += 1

    if has_work and not any(i.state == InstanceState.READY for i in live):
        if blocked is not None and count == len(live) == 0:
            actions.extend(_fallback(policy, fallback_tier, blocked))
        elif pending.oldest_wait_s > policy.max_gpu_wait_s:
            actions.extend(_fallback(policy, fallback_tier, FallbackReason.WAITED_TOO_LONG))
    return actions


def _affordable(
    ranked: list[RankedOffer], policy: TenantPolicy, hard_left_usd: float, soft_left_usd: float, tick_s: float
) -> RankedOffer | None:
    """The best-ranked offer whose reservation fits the soft cap and, with its first tick, the hard caps.

    The first tick counts even when the reservation is smaller (a short ``min_runtime_s``): the instance accrues
    before the next tick can destroy it.
    """
    for r in ranked:
        price = r.offer.total_per_h_usd
        reservation = reservation_usd(price, policy.min_runtime_s)
        first_tick = price * tick_s / SECONDS_PER_HOUR
        if reservation <= soft_left_usd and max(reservation, first_tick) <= hard_left_usd:
            return r
    return None


def _fallback(policy: TenantPolicy, tier: Tier | None, reason: FallbackReason) -> list[Action]:
    if tier is None:
        return [Warn(policy.tenant, WarnCode.PAUSED, f"paused: {reason.value}, and no tier after the cloud is allowed")]
    return [Fallback(policy.tenant, tier, reason)]
