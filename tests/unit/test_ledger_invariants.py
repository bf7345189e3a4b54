"""Budget invariants over random traces: the policy drives a ledger through rentals, ticks, failures and destroys.

Invariants: spend never exceeds a hard cap by more than one tick of accrual; the ledger always sums (and every
charge equals price x lifetime computed independently); no instance exists without a reservation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from orchestrator.scheduler.ledger import (
    Ledger,
    ReservationRefusedError,
    UnknownHoldError,
    accrue,
    cost_musd,
    ledger_errors,
    open_account,
    reserve,
    settle,
    usd_to_musd,
)
from orchestrator.scheduler.model import Destroy, InstanceState, InstanceView, PendingWork, Rent, Snapshot, Tier
from orchestrator.scheduler.policy import decide
from tests.fixtures.scheduler_factories import offer, policy, throughput

# Two minutes before midnight at the end of a month: traces cross a day and a month boundary.
START = datetime(2026, 3, 31, 23, 58, tzinfo=UTC)
TENANT = "acme"


class _Live:
    def __init__(self, rent: Rent, started: datetime) -> None:
        self.rent = rent
        self.started = started
        self.state = InstanceState.LOADING
        self.ready_at: datetime | None = None


class BudgetMachine(RuleBasedStateMachine):
    """The policy and the ledger together, as the actuator and the simulator run them."""

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.ledger = Ledger()
        self.live: dict[str, _Live] = {}
        self.settled_bills_musd = 0
        self.rentals = 0
        self.pending = PendingWork(TENANT, 0.0, 0, 0.0)
        self.max_tick_accrual_musd = 0

    @initialize(
        daily_cap=st.floats(0.001, 0.5),
        monthly_cap=st.floats(0.001, 1.0),
        tick_s=st.sampled_from([5.0, 15.0, 60.0]),
        min_runtime_s=st.sampled_from([0.0, 60.0, 600.0]),
        prices=st.lists(st.floats(0.2, 30.0), min_size=1, max_size=6),
        max_instances=st.integers(1, 4),
    )
    def setup(
        self,
        daily_cap: float,
        monthly_cap: float,
        tick_s: float,
        min_runtime_s: float,
        prices: list[float],
        max_instances: int,
    ) -> None:
        self.tick_s = tick_s
        self.policy = policy(
            TENANT,
            daily_cap_usd=daily_cap,
            monthly_cap_usd=monthly_cap,
            soft_cap_usd=monthly_cap,
            min_runtime_s=min_runtime_s,
            max_instances=max_instances,
            max_price_per_h_usd=50.0,
            max_overhead_ratio=100.0,
            scale_up_threshold_gpu_s=10.0,
            tiers=(Tier.CLOUD, Tier.CPU),
        )
        self.offers = {i: offer(i, price_per_h_usd=p) for i, p in enumerate(prices, start=1)}
        self.ledger.open(TENANT, daily_cap_usd=daily_cap, monthly_cap_usd=monthly_cap, now=self.now)

    @rule(gpu_s=st.floats(0.0, 100_000.0), wait_s=st.floats(0.0, 3600.0))
    def work_arrives_or_drains(self, gpu_s: float, wait_s: float) -> None:
        self.pending = PendingWork(TENANT, gpu_s, 0 if gpu_s < 1.0 else int(gpu_s // 10) + 1, wait_s)

    @rule(data=st.data())
    def an_instance_changes_state(self, data: st.DataObject) -> None:
        if not self.live:
            return
        instance_id = data.draw(st.sampled_from(sorted(self.live)))
        state = data.draw(st.sampled_from([InstanceState.READY, InstanceState.EXITED, InstanceState.STOPPED]))
        self.live[instance_id].state = state
        self.live[instance_id].ready_at = self.now

    @rule(fraction=st.floats(0.05, 1.0))
    def tick(self, fraction: float) -> None:
        # The scheduler ticks at least every tick_s; the cap guarantee holds only under that promise.
        rate_musd_per_h = sum(usd_to_musd(x.rent.price_per_h_usd) for x in self.live.values())
        elapsed = timedelta(seconds=self.tick_s * fraction)
        # One tick of accrual at the rates of the instances alive during it (plus a micro-dollar each of rounding).
        tick_accrual = cost_musd(rate_musd_per_h, elapsed) + len(self.live)
        self.max_tick_accrual_musd = max(self.max_tick_accrual_musd, tick_accrual)
        self.now += elapsed
        self.ledger.accrue(self.now)
        for action in decide(self._snapshot()):
            if isinstance(action, Rent):
                self._rent(action)
            elif isinstance(action, Destroy):
                event(f"destroy: {action.reason.value}")
                self._destroy(action.instance_id)

    def _snapshot(self) -> Snapshot:
        rented = {x.rent.offer_id for x in self.live.values()}
        instances = tuple(
            InstanceView(
                instance_id=instance_id,
                tenant=TENANT,
                state=x.state,
                gpu_name=x.rent.gpu_name,
                machine_id=x.rent.machine_id,
                price_per_h_usd=x.rent.price_per_h_usd,
                created_at=x.started,
                ready_at=x.ready_at,
                last_busy_at=x.ready_at,
                in_flight_batches=1 if self.pending.batches else 0,
                hold_left_usd=self.ledger.hold_left_usd(TENANT, instance_id),
            )
            for instance_id, x in sorted(self.live.items())
        )
        return Snapshot(
            now=self.now,
            tick_s=self.tick_s,
            tenants={TENANT: self.policy},
            pending={TENANT: self.pending},
            instances=instances,
            offers=tuple(o for i, o in self.offers.items() if i not in rented),
            budgets={TENANT: self.ledger.view(TENANT)},
            excluded_machines=frozenset(),
            throughput=throughput(),
        )

    def _rent(self, action: Rent) -> None:
        instance_id = f"i{self.rentals}"
        self.rentals += 1
        remaining = self.ledger.accounts[TENANT].remaining_musd
        try:
            self.ledger.reserve(
                TENANT,
                instance_id=instance_id,
                price_per_h_usd=action.price_per_h_usd,
                amount_usd=action.reservation_usd,
                now=self.now,
            )
        except ReservationRefusedError:
            # The policy checks in floats, the ledger in micro-dollars: they may disagree only at the last one.
            assert usd_to_musd(action.reservation_usd) - remaining <= 1
            return
        event("rented")
        self.live[instance_id] = _Live(action, self.now)

    def _destroy(self, instance_id: str) -> None:
        x = self.live.pop(instance_id)
        bill = self.ledger.settle(TENANT, instance_id=instance_id, now=self.now)
        expected = cost_musd(usd_to_musd(x.rent.price_per_h_usd), self.now - x.started)
        assert usd_to_musd(bill) == expected
        self.settled_bills_musd += expected

    @invariant()
    def ledger_sums(self) -> None:
        if TENANT not in self.ledger.accounts:
            return
        account = self.ledger.accounts[TENANT]
        assert ledger_errors(account) == []
        live_bills = sum(
            cost_musd(usd_to_musd(x.rent.price_per_h_usd), self.now - x.started) for x in self.live.values()
        )
        assert account.total_spent_musd == self.settled_bills_musd + live_bills

    @invariant()
    def spend_never_exceeds_a_hard_cap_by_more_than_one_tick(self) -> None:
        if TENANT not in self.ledger.accounts:
            return
        account = self.ledger.accounts[TENANT]
        slack = self.max_tick_accrual_musd
        assert account.day_spent_musd <= account.daily_cap_musd + slack
        assert account.month_spent_musd <= account.monthly_cap_musd + slack

    @invariant()
    def no_instance_without_a_reservation(self) -> None:
        if TENANT not in self.ledger.accounts:
            return
        assert set(self.ledger.accounts[TENANT].live_holds) == set(self.live)

    @rule()
    def everything_is_destroyed(self) -> None:
        for instance_id in sorted(self.live):
            self._destroy(instance_id)
        if TENANT in self.ledger.accounts:
            assert self.ledger.accounts[TENANT].reserved_musd == 0


BudgetMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)
TestBudgetMachine = BudgetMachine.TestCase


@settings(max_examples=80, deadline=None)
@given(
    price=st.floats(0.01, 10.0),
    steps_ms=st.lists(st.integers(1, 7_200_000), min_size=1, max_size=30),
    hold_usd=st.floats(0.0, 5.0),
)
def test_accrual_in_any_steps_sums_to_price_times_lifetime(price: float, steps_ms: list[int], hold_usd: float) -> None:
    start = datetime(2026, 1, 31, 22, 0, tzinfo=UTC)
    account = open_account(TENANT, daily_cap_usd=1e6, monthly_cap_usd=1e7, now=start)
    account = reserve(account, instance_id="a", price_per_h_usd=price, amount_usd=hold_usd, now=start)
    now = start
    for step in steps_ms:
        now += timedelta(milliseconds=step)
        account = accrue(account, now)
        assert ledger_errors(account) == []
    account, bill = settle(account, instance_id="a", now=now)
    assert bill == cost_musd(usd_to_musd(price), now - start)
    assert account.total_spent_musd == account.settled_musd == bill
    assert account.reserved_musd == 0


def test_a_reservation_past_the_remaining_budget_is_refused_and_changes_nothing() -> None:
    account = open_account(TENANT, daily_cap_usd=1.0, monthly_cap_usd=10.0, now=START)
    account = reserve(account, instance_id="a", price_per_h_usd=1.0, amount_usd=0.6, now=START)
    with pytest.raises(ReservationRefusedError):
        reserve(account, instance_id="b", price_per_h_usd=1.0, amount_usd=0.5, now=START)
    assert account.reserved_musd == usd_to_musd(0.6)
    assert account.remaining_musd == usd_to_musd(0.4)


def test_accrual_draws_on_the_reservation_before_the_remaining_budget() -> None:
    account = open_account(TENANT, daily_cap_usd=10.0, monthly_cap_usd=100.0, now=START)
    account = reserve(account, instance_id="a", price_per_h_usd=3.6, amount_usd=0.01, now=START)
    before = account.remaining_musd
    # 3.6 $/h is 0.001 $/s: 5 s stay within the 0.01 hold, 15 s more take 0.01 from what remains.
    account = accrue(account, START + timedelta(seconds=5))
    assert account.remaining_musd == before
    account = accrue(account, START + timedelta(seconds=20))
    assert account.remaining_musd == before - usd_to_musd(0.01)
    account, bill = settle(account, instance_id="a", now=START + timedelta(seconds=20))
    assert bill == usd_to_musd(0.02)
    assert account.remaining_musd == before - usd_to_musd(0.01)


def test_a_charge_across_midnight_is_split_between_the_days() -> None:
    account = open_account(TENANT, daily_cap_usd=10.0, monthly_cap_usd=100.0, now=START)
    account = reserve(account, instance_id="a", price_per_h_usd=3.6, amount_usd=0.0, now=START)
    # 120 s before midnight (0.12 $), then 30 s of April 1st (0.03 $): a new day and a new month.
    account = accrue(account, START + timedelta(seconds=150))
    assert account.day == START.date() + timedelta(days=1)
    assert account.day_spent_musd == account.month_spent_musd == usd_to_musd(0.03)
    assert account.total_spent_musd == usd_to_musd(0.15)


def test_settling_an_unknown_instance_is_an_error() -> None:
    account = open_account(TENANT, daily_cap_usd=1.0, monthly_cap_usd=1.0, now=START)
    with pytest.raises(UnknownHoldError):
        settle(account, instance_id="nope", now=START)


def test_ledger_view_reports_dollars() -> None:
    noon = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    ledger = Ledger()
    ledger.open(TENANT, daily_cap_usd=5.0, monthly_cap_usd=50.0, now=noon)
    ledger.reserve(TENANT, instance_id="a", price_per_h_usd=0.5, amount_usd=0.25, now=noon)
    ledger.accrue(noon + timedelta(minutes=15))
    view = ledger.view(TENANT)
    assert (view.day_spent_usd, view.month_spent_usd, view.reserved_usd) == (0.125, 0.125, 0.125)
    assert ledger.hold_left_usd(TENANT, "a") == 0.125
    assert ledger.settle(TENANT, instance_id="a", now=noon + timedelta(hours=1)) == 0.5
    assert ledger.total_spent_usd() == 0.5
