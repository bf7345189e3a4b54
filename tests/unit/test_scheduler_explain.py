"""explain(snapshot, actions): why the scheduler rented, destroyed, warned, fell back, or did not rent, read as a
specification. Every case runs the real decide() on a snapshot and explains its actions."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.scheduler.explain import EventKind, Explanation, HoldReason, explain, tenant_statuses
from orchestrator.scheduler.model import BudgetView, InstanceState, OfferFilters, Snapshot, Tier
from orchestrator.scheduler.policy import decide
from tests.fixtures.scheduler_factories import NOW, instance, offer, policy, snapshot, work


def explained(snap: Snapshot) -> list[Explanation]:
    return explain(snap, decide(snap))


def status(snap: Snapshot, tenant: str = "acme") -> Explanation | None:
    return tenant_statuses(snap, decide(snap)).get(tenant)


def test_a_rental_for_a_backlog_says_so_with_the_gpu_price_and_backlog() -> None:
    tenant = policy(scale_up_threshold_gpu_s=600.0, max_instances=1)
    snap = snapshot(policies=[tenant], pending=[work(gpu_s=5000.0)], offers=[offer()])

    [rent] = explained(snap)

    assert (rent.kind, rent.reason, rent.offer_id) == (EventKind.RENT, "backlog", 1)
    assert "RTX 4090 at $0.41/h" in rent.message and "5,000 GPU-s" in rent.message and "600 GPU-s" in rent.message


def test_a_rental_after_the_scale_up_wait_names_the_wait() -> None:
    tenant = policy(scale_up_threshold_gpu_s=600.0, scale_up_wait_s=60.0)
    snap = snapshot(policies=[tenant], pending=[work(gpu_s=50.0, oldest_wait_s=61.0)], offers=[offer()])

    [rent] = explained(snap)

    assert (rent.kind, rent.reason) == (EventKind.RENT, "waiting")
    assert "61 s" in rent.message and "60 s" in rent.message


def test_a_rental_to_keep_min_instances_says_so() -> None:
    [rent] = explained(snapshot(policies=[policy(min_instances=1)], offers=[offer()]))

    assert (rent.kind, rent.reason) == (EventKind.RENT, "min_instances")
    assert "minimum of 1 instance" in rent.message


def test_a_small_young_backlog_waits_below_the_threshold_and_says_when_it_will_rent() -> None:
    tenant = policy(scale_up_threshold_gpu_s=600.0, scale_up_wait_s=60.0)
    snap = snapshot(policies=[tenant], pending=[work(gpu_s=50.0, oldest_wait_s=10.0)], offers=[offer()])

    explanation = status(snap)

    assert explanation is not None
    assert (explanation.kind, explanation.reason) == (EventKind.WAIT, HoldReason.BELOW_THRESHOLD)
    assert "below the scale-up threshold of 600 GPU-s" in explanation.message
    assert "waited 60 s (now 10 s)" in explanation.message


def test_at_max_instances_nothing_more_is_rented_and_the_limit_is_named() -> None:
    tenant = policy(scale_up_threshold_gpu_s=600.0, max_instances=1)
    busy = instance("a", in_flight_batches=1)
    snap = snapshot(policies=[tenant], pending=[work(gpu_s=100_000.0)], instances=[busy], offers=[offer()])

    explanation = status(snap)

    assert explanation is not None
    assert (explanation.kind, explanation.reason) == (EventKind.HOLD, HoldReason.MAX_INSTANCES)
    assert "1 instance of at most 1" in explanation.message


def test_a_booting_instance_is_waited_for() -> None:
    booting = instance("a", state=InstanceState.LOADING, ready_at=None, created_at=NOW - timedelta(minutes=1))
    snap = snapshot(policies=[policy(scale_up_threshold_gpu_s=600.0)], pending=[work(gpu_s=200.0)], instances=[booting])

    explanation = status(snap)

    assert explanation is not None
    assert (explanation.kind, explanation.reason) == (EventKind.WAIT, HoldReason.BOOTING)
    assert "1 instance to boot (RTX 4090)" in explanation.message


def test_running_instances_that_will_finish_the_backlog_hold_further_rentals() -> None:
    snap = snapshot(
        policies=[policy(scale_up_threshold_gpu_s=600.0)],
        pending=[work(gpu_s=300.0)],
        instances=[instance("a", in_flight_batches=1)],
        offers=[offer()],
    )

    explanation = status(snap)

    assert explanation is not None
    assert (explanation.kind, explanation.reason) == (EventKind.HOLD, HoldReason.ENOUGH_CAPACITY)


def test_an_offer_too_dear_per_image_is_not_added_and_that_is_the_reason() -> None:
    tenant = policy(scale_up_threshold_gpu_s=600.0, max_instances=4, max_overhead_ratio=0.25)
    snap = snapshot(
        policies=[tenant],
        pending=[work(gpu_s=50_000.0)],
        instances=[instance("a", price_per_h_usd=0.30)],
        offers=[offer(1, price_per_h_usd=0.80)],
    )

    explanation = status(snap)

    assert explanation is not None
    assert (explanation.kind, explanation.reason) == (EventKind.HOLD, HoldReason.NOT_WORTH_IT)
    assert "25% above the best price per image" in explanation.message


def test_offers_only_above_the_price_ceiling_are_named_as_the_cause() -> None:
    tenant = policy(max_price_per_h_usd=0.30, tiers=(Tier.CLOUD, Tier.CPU))
    snap = snapshot(policies=[tenant], pending=[work(gpu_s=5000.0)], offers=[offer(1, price_per_h_usd=0.50)])

    explanation = status(snap)

    assert explanation is not None
    assert (explanation.kind, explanation.reason) == (EventKind.FALLBACK, "no_offers")
    assert "$0.51/h or more, above the ceiling of $0.30/h" in explanation.message
    assert "run on the CPU" in explanation.message


def test_no_matching_offer_with_no_fallback_pauses_and_says_why() -> None:
    tenant = policy(tiers=(Tier.CLOUD,), filters=OfferFilters(gpu_names=("H100",)))
    snap = snapshot(policies=[tenant], pending=[work(gpu_s=5000.0)], offers=[offer()])

    explanation = status(snap)

    assert explanation is not None
    assert (explanation.kind, explanation.reason) == (EventKind.WARN, "paused")
    assert "no offer of H100" in explanation.message and "no tier after the cloud" in explanation.message


def test_the_soft_cap_names_the_cap_the_spend_and_the_reservation() -> None:
    tenant = policy(soft_cap_usd=50.0, tiers=(Tier.CLOUD, Tier.LOCAL))
    snap = snapshot(
        policies=[tenant],
        pending=[work(gpu_s=5000.0)],
        offers=[offer()],
        budgets=[BudgetView("acme", day_spent_usd=1.0, month_spent_usd=49.99, reserved_usd=0.0)],
    )

    explanation = status(snap)

    assert explanation is not None
    assert (explanation.kind, explanation.reason) == (EventKind.FALLBACK, "budget")
    assert "soft cap of $50.00" in explanation.message and "spent this month $49.99" in explanation.message
    assert "local GPU worker" in explanation.message


def test_the_daily_hard_cap_is_named_when_it_binds() -> None:
    tenant = policy(daily_cap_usd=5.0, tiers=(Tier.CLOUD, Tier.CPU))
    snap = snapshot(
        policies=[tenant],
        pending=[work(gpu_s=5000.0)],
        offers=[offer()],
        budgets=[BudgetView("acme", day_spent_usd=5.0, month_spent_usd=20.0, reserved_usd=0.0)],
    )

    explanation = status(snap)

    assert explanation is not None
    assert explanation.reason == "budget"
    assert "daily hard cap of $5.00 is reached (spent today $5.00" in explanation.message


def test_an_instance_destroyed_at_the_hard_cap_is_explained_and_the_tenant_warned() -> None:
    tenant = policy(daily_cap_usd=10.0)
    snap = snapshot(
        policies=[tenant],
        instances=[instance("a", price_per_h_usd=3.0, hold_left_usd=0.0)],
        budgets=[BudgetView("acme", day_spent_usd=9.999, month_spent_usd=50.0, reserved_usd=0.0)],
    )

    events = explained(snap)

    assert [(e.kind, e.reason, e.instance_id) for e in events] == [
        (EventKind.DESTROY, "hard_cap", "a"),
        (EventKind.WARN, "hard_cap", None),
    ]
    assert events[1].message.endswith("its instances were destroyed.")


def test_an_idle_instance_destroyed_names_the_idle_timeout() -> None:
    tenant = policy(idle_timeout_s=120.0)
    idle = instance("a", last_busy_at=NOW - timedelta(minutes=10))

    [event] = explained(snapshot(policies=[tenant], instances=[idle]))

    assert (event.kind, event.reason, event.instance_id) == (EventKind.DESTROY, "idle", "a")
    assert "idle timeout of 120 s" in event.message


def test_a_tenant_without_the_cloud_tier_falls_back_with_that_reason() -> None:
    tenant = policy(tiers=(Tier.LOCAL, Tier.CPU))

    explanation = status(snapshot(policies=[tenant], pending=[work(gpu_s=500.0)]))

    assert explanation is not None
    assert (explanation.kind, explanation.reason) == (EventKind.FALLBACK, "cloud_not_allowed")
    assert "not among the tenant's allowed tiers" in explanation.message


def test_work_that_waited_past_the_longest_gpu_wait_falls_back_and_says_how_long() -> None:
    tenant = policy(max_gpu_wait_s=300.0, tiers=(Tier.CLOUD, Tier.CPU))
    booting = instance("a", state=InstanceState.LOADING, ready_at=None, created_at=NOW - timedelta(minutes=2))
    snap = snapshot(policies=[tenant], pending=[work(gpu_s=100.0, oldest_wait_s=400.0)], instances=[booting])

    explanation = status(snap)

    assert explanation is not None
    assert (explanation.kind, explanation.reason) == (EventKind.FALLBACK, "waited_too_long")
    assert "300 s" in explanation.message and "400 s" in explanation.message


def test_a_tenant_without_work_or_decisions_has_nothing_to_explain() -> None:
    assert explained(snapshot(policies=[policy()], offers=[offer()])) == []


def test_each_tenant_gets_its_own_explanations() -> None:
    snap = snapshot(
        policies=[policy("a", scale_up_threshold_gpu_s=600.0, max_instances=1), policy("b", tiers=(Tier.CPU,))],
        pending=[work("a", gpu_s=5000.0), work("b", gpu_s=10.0)],
        offers=[offer()],
    )

    events = explained(snap)

    assert [(e.tenant, e.kind) for e in events] == [("a", EventKind.RENT), ("b", EventKind.FALLBACK)]
