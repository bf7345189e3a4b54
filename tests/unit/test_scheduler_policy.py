"""The scheduler policy, decide(snapshot) -> actions, read as a specification."""

from __future__ import annotations

from datetime import timedelta
from typing import TypeVar

import pytest

from orchestrator.scheduler.ledger import reservation_usd
from orchestrator.scheduler.model import (
    BudgetView,
    Destroy,
    DestroyReason,
    Fallback,
    FallbackReason,
    InstanceState,
    Rent,
    RentReason,
    Tier,
    Warn,
    WarnCode,
)
from orchestrator.scheduler.policy import decide
from tests.fixtures.scheduler_factories import NOW, instance, offer, policy, snapshot, work

T = TypeVar("T")


def of_type(actions: list[object], kind: type[T]) -> list[T]:
    return [a for a in actions if isinstance(a, kind)]


def test_a_backlog_above_the_threshold_rents_the_best_value_offer_with_a_reservation() -> None:
    tenant = policy(scale_up_threshold_gpu_s=600.0, min_runtime_s=600.0)
    offers = [offer(1, price_per_h_usd=0.60), offer(2, price_per_h_usd=0.40)]
    actions = decide(snapshot(policies=[tenant], pending=[work(gpu_s=5000.0)], offers=offers))
    rents = of_type(actions, Rent)
    assert [r.offer_id for r in rents] == [2]
    assert rents[0].reason == RentReason.BACKLOG
    assert rents[0].reservation_usd == pytest.approx(reservation_usd(0.41, 600.0))
    assert rents[0].reservation_usd == pytest.approx(0.41 * 600 / 3600)


def test_a_small_backlog_waits_then_gets_one_instance() -> None:
    tenant = policy(scale_up_threshold_gpu_s=600.0, scale_up_wait_s=60.0)
    fresh = decide(snapshot(policies=[tenant], pending=[work(gpu_s=50.0, oldest_wait_s=10.0)], offers=[offer()]))
    assert of_type(fresh, Rent) == []
    waited = decide(snapshot(policies=[tenant], pending=[work(gpu_s=50.0, oldest_wait_s=61.0)], offers=[offer()]))
    assert [(r.offer_id, r.reason) for r in of_type(waited, Rent)] == [(1, RentReason.WAITING)]


def test_scale_up_rents_distinct_offers_while_each_gets_enough_work_and_stops_at_max() -> None:
    tenant = policy(scale_up_threshold_gpu_s=600.0, max_instances=3, max_overhead_ratio=1.0)
    offers = [offer(i, price_per_h_usd=0.40 + i / 1000) for i in range(1, 7)]
    actions = decide(snapshot(policies=[tenant], pending=[work(gpu_s=100_000.0)], offers=offers))
    assert [r.offer_id for r in of_type(actions, Rent)] == [1, 2, 3]
    # With two live instances, a backlog that leaves the third less than the threshold after boot rents nothing.
    live = [instance("a", machine_id=91), instance("b", machine_id=92)]
    small = 2 * 180.0 + 3 * 500.0
    actions = decide(snapshot(policies=[tenant], pending=[work(gpu_s=small)], instances=live, offers=offers))
    assert of_type(actions, Rent) == []


def test_an_offer_much_dearer_per_image_than_the_best_is_not_added() -> None:
    tenant = policy(scale_up_threshold_gpu_s=600.0, max_instances=4, max_overhead_ratio=0.25)
    live = [instance("a", price_per_h_usd=0.30)]
    dear = offer(1, price_per_h_usd=0.80)
    actions = decide(snapshot(policies=[tenant], pending=[work(gpu_s=50_000.0)], instances=live, offers=[dear]))
    assert of_type(actions, Rent) == []
    tolerant = policy(scale_up_threshold_gpu_s=600.0, max_instances=4, max_overhead_ratio=2.0)
    actions = decide(snapshot(policies=[tolerant], pending=[work(gpu_s=50_000.0)], instances=live, offers=[dear]))
    assert [r.offer_id for r in of_type(actions, Rent)] == [1]


def test_min_instances_are_rented_without_work() -> None:
    actions = decide(snapshot(policies=[policy(min_instances=1)], offers=[offer()]))
    assert [(r.offer_id, r.reason) for r in of_type(actions, Rent)] == [(1, RentReason.MIN_INSTANCES)]


def test_the_soft_cap_stops_new_rentals_warns_and_falls_back() -> None:
    tenant = policy(soft_cap_usd=10.0, tiers=(Tier.CLOUD, Tier.LOCAL, Tier.CPU))
    near_soft = BudgetView("acme", day_spent_usd=1.0, month_spent_usd=9.99, reserved_usd=0.0)
    actions = decide(snapshot(policies=[tenant], pending=[work(gpu_s=5000.0)], offers=[offer()], budgets=[near_soft]))
    assert of_type(actions, Rent) == []
    assert [w.code for w in of_type(actions, Warn)] == [WarnCode.SOFT_CAP]
    assert of_type(actions, Fallback) == [Fallback("acme", Tier.LOCAL, FallbackReason.BUDGET)]


def test_a_reservation_that_would_cross_the_daily_hard_cap_is_not_made() -> None:
    tenant = policy(daily_cap_usd=5.0, min_runtime_s=3600.0, tiers=(Tier.CLOUD, Tier.CPU))
    # 4.80 spent + 0.10 reserved leaves 0.10; an hour of a 0.41 $/h offer needs 0.41.
    budget = BudgetView("acme", day_spent_usd=4.80, month_spent_usd=4.80, reserved_usd=0.10)
    actions = decide(snapshot(policies=[tenant], pending=[work(gpu_s=5000.0)], offers=[offer()], budgets=[budget]))
    assert of_type(actions, Rent) == []
    assert [w.code for w in of_type(actions, Warn)] == [WarnCode.HARD_CAP]
    assert of_type(actions, Fallback) == [Fallback("acme", Tier.CPU, FallbackReason.BUDGET)]


def test_a_cheaper_offer_that_fits_the_budget_is_rented_when_the_best_does_not() -> None:
    tenant = policy(daily_cap_usd=5.0, min_runtime_s=3600.0, max_overhead_ratio=5.0)
    # The 5090 offer is the better value (260 img/s for 0.51 $/h) but an hour of it needs 0.51; 0.47 is left.
    offers = [offer(1, gpu_name="RTX 5090", price_per_h_usd=0.50), offer(2, price_per_h_usd=0.44)]
    budget = BudgetView("acme", day_spent_usd=4.53, month_spent_usd=4.53, reserved_usd=0.0)
    actions = decide(snapshot(policies=[tenant], pending=[work(gpu_s=5000.0)], offers=offers, budgets=[budget]))
    assert [r.offer_id for r in of_type(actions, Rent)] == [2]
    roomy = BudgetView("acme", day_spent_usd=1.0, month_spent_usd=1.0, reserved_usd=0.0)
    actions = decide(snapshot(policies=[tenant], pending=[work(gpu_s=5000.0)], offers=offers, budgets=[roomy]))
    assert next(r.offer_id for r in of_type(actions, Rent)) == 1


def test_an_instance_whose_next_tick_would_cross_a_hard_cap_is_destroyed() -> None:
    tenant = policy(daily_cap_usd=5.0)
    # 3.6 $/h accrues 0.005 $ in a 5 s tick; 0.002 $ remains and no reservation is left to draw on.
    budget = BudgetView("acme", day_spent_usd=4.998, month_spent_usd=4.998, reserved_usd=0.0)
    dear = instance("a", price_per_h_usd=3.6, in_flight_batches=1)
    actions = decide(
        snapshot(policies=[tenant], pending=[work(gpu_s=100.0)], instances=[dear], budgets=[budget], tick_s=5.0)
    )
    assert Destroy("a", "acme", dear.machine_id, DestroyReason.HARD_CAP) in actions
    assert WarnCode.HARD_CAP in [w.code for w in of_type(actions, Warn)]


def test_an_instance_still_covered_by_its_reservation_is_kept_at_the_cap() -> None:
    tenant = policy(daily_cap_usd=5.0)
    budget = BudgetView("acme", day_spent_usd=4.90, month_spent_usd=4.90, reserved_usd=0.10)
    covered = instance("a", price_per_h_usd=3.6, in_flight_batches=1, hold_left_usd=0.10)
    actions = decide(snapshot(policies=[tenant], pending=[work(gpu_s=100.0)], instances=[covered], budgets=[budget]))
    assert of_type(actions, Destroy) == []


def test_of_several_instances_the_idle_and_dearest_go_first_at_the_cap() -> None:
    tenant = policy(monthly_cap_usd=10.0)
    budget = BudgetView("acme", day_spent_usd=1.0, month_spent_usd=9.999, reserved_usd=0.0)
    busy = instance("busy", price_per_h_usd=0.36, in_flight_batches=1)
    idle_dear = instance("idle", price_per_h_usd=0.72, machine_id=501)
    actions = decide(
        snapshot(policies=[tenant], pending=[work(gpu_s=100.0)], instances=[busy, idle_dear], budgets=[budget])
    )
    # 0.001 $ left: the busy one's 5 s (0.0005 $) fits once the idle one's (0.001 $) is gone.
    assert [d.instance_id for d in of_type(actions, Destroy)] == ["idle"]


def test_idle_instances_are_destroyed_after_the_idle_timeout_keeping_min_instances() -> None:
    tenant = policy(idle_timeout_s=120.0, min_instances=1)
    long_idle = [
        instance("a", machine_id=1, last_busy_at=NOW - timedelta(seconds=300), price_per_h_usd=0.50),
        instance("b", machine_id=2, last_busy_at=NOW - timedelta(seconds=200), price_per_h_usd=0.30),
    ]
    actions = decide(snapshot(policies=[tenant], instances=long_idle))
    # The one with fewer images per dollar goes; min_instances keeps the other.
    assert actions == [Destroy("a", "acme", 1, DestroyReason.IDLE)]


def test_an_instance_idle_for_less_than_the_timeout_is_kept() -> None:
    tenant = policy(idle_timeout_s=120.0)
    recent = instance("a", last_busy_at=NOW - timedelta(seconds=119))
    assert decide(snapshot(policies=[tenant], instances=[recent])) == []


def test_an_idle_instance_is_kept_while_the_tenant_has_pending_work() -> None:
    tenant = policy(idle_timeout_s=60.0, scale_up_threshold_gpu_s=10**9)
    waiting = instance("a", last_busy_at=NOW - timedelta(seconds=600))
    actions = decide(snapshot(policies=[tenant], instances=[waiting], pending=[work(gpu_s=20.0)]))
    assert of_type(actions, Destroy) == []


def test_a_boot_past_its_deadline_is_destroyed_and_its_machine_excluded() -> None:
    tenant = policy(boot_deadline_s=600.0)
    stuck = instance("a", state=InstanceState.LOADING, created_at=NOW - timedelta(seconds=601), ready_at=None)
    booting = instance("b", state=InstanceState.LOADING, created_at=NOW - timedelta(seconds=599), ready_at=None)
    actions = decide(snapshot(policies=[tenant], instances=[stuck, booting]))
    assert actions == [Destroy("a", "acme", stuck.machine_id, DestroyReason.BOOT_TIMEOUT, exclude_machine=True)]


@pytest.mark.parametrize(
    "state",
    [InstanceState.EXITED, InstanceState.UNKNOWN, InstanceState.OFFLINE, InstanceState.STOPPED, InstanceState.FAILED],
)
def test_a_broken_instance_is_destroyed_and_its_machine_excluded(state: InstanceState) -> None:
    broken = instance("a", state=state, machine_id=42)
    actions = decide(snapshot(instances=[broken]))
    assert actions == [Destroy("a", "acme", 42, DestroyReason.BROKEN, exclude_machine=True)]


def test_an_excluded_machine_is_not_rented_again() -> None:
    actions = decide(snapshot(pending=[work(gpu_s=5000.0)], offers=[offer(1, machine_id=42)], excluded=[42]))
    assert of_type(actions, Rent) == []
    assert [w.code for w in of_type(actions, Warn)] == [WarnCode.NO_OFFERS]
    assert of_type(actions, Fallback) == [Fallback("acme", Tier.LOCAL, FallbackReason.NO_OFFERS)]


def test_a_tenant_without_the_cloud_tier_falls_back_and_rents_nothing() -> None:
    tenant = policy(tiers=(Tier.LOCAL, Tier.CPU))
    actions = decide(snapshot(policies=[tenant], pending=[work(gpu_s=5000.0)], offers=[offer()]))
    assert actions == [Fallback("acme", Tier.LOCAL, FallbackReason.CLOUD_NOT_ALLOWED)]


def test_work_waiting_past_max_gpu_wait_falls_back_while_no_instance_is_ready() -> None:
    tenant = policy(max_gpu_wait_s=300.0, tiers=(Tier.CLOUD, Tier.CPU))
    booting = instance("a", state=InstanceState.LOADING, created_at=NOW - timedelta(seconds=100), ready_at=None)
    actions = decide(snapshot(policies=[tenant], pending=[work(gpu_s=100.0, oldest_wait_s=301.0)], instances=[booting]))
    assert of_type(actions, Fallback) == [Fallback("acme", Tier.CPU, FallbackReason.WAITED_TOO_LONG)]
    ready = instance("b", machine_id=7)
    actions = decide(
        snapshot(policies=[tenant], pending=[work(gpu_s=100.0, oldest_wait_s=301.0)], instances=[booting, ready])
    )
    assert of_type(actions, Fallback) == []


def test_a_cloud_only_tenant_that_cannot_rent_is_paused_with_a_reason() -> None:
    tenant = policy(tiers=(Tier.CLOUD,), soft_cap_usd=0.0)
    actions = decide(snapshot(policies=[tenant], pending=[work(gpu_s=5000.0)], offers=[offer()]))
    assert [w.code for w in of_type(actions, Warn)] == [WarnCode.SOFT_CAP, WarnCode.PAUSED]
    assert of_type(actions, Fallback) == []


def test_two_tenants_never_rent_the_same_offer_in_one_tick() -> None:
    tenants = [policy("a"), policy("b")]
    actions = decide(
        snapshot(policies=tenants, pending=[work("a", gpu_s=5000.0), work("b", gpu_s=5000.0)], offers=[offer(1)])
    )
    assert [(r.tenant, r.offer_id) for r in of_type(actions, Rent)] == [("a", 1)]


def test_instances_of_a_tenant_without_policy_are_destroyed() -> None:
    actions = decide(snapshot(instances=[instance("x", tenant="gone", machine_id=3)]))
    assert actions == [Destroy("x", "gone", 3, DestroyReason.NO_POLICY)]


def test_instances_beyond_a_lowered_max_are_destroyed_idle_first() -> None:
    tenant = policy(max_instances=1, scale_up_threshold_gpu_s=10**9)
    busy = instance("busy", machine_id=1, in_flight_batches=2)
    idle = instance("idle", machine_id=2)
    actions = decide(snapshot(policies=[tenant], instances=[busy, idle], pending=[work(gpu_s=30.0)]))
    assert [(d.instance_id, d.reason) for d in of_type(actions, Destroy)] == [("idle", DestroyReason.OVER_MAX)]


def test_decide_is_deterministic() -> None:
    snap = snapshot(
        policies=[policy("a"), policy("b", max_instances=2)],
        pending=[work("a", gpu_s=9000.0), work("b", gpu_s=20_000.0, oldest_wait_s=2000.0)],
        offers=[offer(i, price_per_h_usd=0.3 + i / 100) for i in range(1, 8)],
    )
    assert decide(snap) == decide(snap)
    assert of_type(decide(snap), Rent)
