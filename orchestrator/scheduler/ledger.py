"""Budget arithmetic, pure: reserve before a rental, accrue per second while an instance exists, settle on destroy.

Money is counted in integer micro-dollars so that the ledger sums exactly. Per cap (day, month):

    spent_in_period + reserved + remaining == cap

``remaining`` goes negative only by accrual beyond an exhausted reservation; the policy destroys instances before
that can exceed one tick of accrual. An instance's charge is always ``price x lifetime`` computed from its start, so
per-tick increments telescope to the exact bill. The database-backed ledger follows these same functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

from orchestrator.errors import BudgetExceededError
from orchestrator.scheduler.model import BudgetView

MICROS_PER_USD = 1_000_000
MS_PER_HOUR = 3_600_000


class ReservationRefusedError(BudgetExceededError):
    """A reservation would cross a hard cap; nothing was rented."""

    code = "reservation_refused"


class UnknownHoldError(BudgetExceededError):
    """An accrual or settlement named an instance that has no reservation in this account."""

    code = "unknown_hold"


def usd_to_musd(usd: float) -> int:
    """Dollars to integer micro-dollars (rounded)."""
    return round(usd * MICROS_PER_USD)


def musd_to_usd(musd: int) -> float:
    """Integer micro-dollars to dollars."""
    return musd / MICROS_PER_USD


def cost_musd(price_per_h_musd: int, elapsed: timedelta) -> int:
    """What ``elapsed`` costs at ``price_per_h_musd``, rounded down to the micro-dollar, whole milliseconds."""
    elapsed_ms = max(elapsed // timedelta(milliseconds=1), 0)
    return price_per_h_musd * elapsed_ms // MS_PER_HOUR


def reservation_usd(total_per_h_usd: float, min_runtime_s: float) -> float:
    """The hold taken before a rental: compute plus storage price times the minimum runtime."""
    return total_per_h_usd * min_runtime_s / 3600.0


@dataclass(frozen=True)
class Hold:
    """One live instance's reservation and what it has been charged since it started."""

    instance_id: str
    price_per_h_musd: int
    started_at: datetime
    accrued_until: datetime
    charged_musd: int
    left_musd: int


@dataclass(frozen=True)
class Account:
    """A tenant's money. ``day`` and ``month`` (first day of the month) are UTC calendar periods."""

    tenant: str
    daily_cap_musd: int
    monthly_cap_musd: int
    day: date
    month: date
    day_spent_musd: int = 0
    month_spent_musd: int = 0
    total_spent_musd: int = 0
    # Charges of instances already destroyed; with the live holds' charges they make total_spent.
    settled_musd: int = 0
    holds: Mapping[str, Hold] | None = None

    @property
    def live_holds(self) -> Mapping[str, Hold]:
        """Reservations of live instances by instance id."""
        return self.holds or {}

    @property
    def reserved_musd(self) -> int:
        """Unused reservations of live instances."""
        return sum(h.left_musd for h in self.live_holds.values())

    @property
    def day_remaining_musd(self) -> int:
        """Daily cap less the day's spend and the reservations."""
        return self.daily_cap_musd - self.day_spent_musd - self.reserved_musd

    @property
    def month_remaining_musd(self) -> int:
        """Monthly cap less the month's spend and the reservations."""
        return self.monthly_cap_musd - self.month_spent_musd - self.reserved_musd

    @property
    def remaining_musd(self) -> int:
        """What may still be committed without crossing either hard cap."""
        return min(self.day_remaining_musd, self.month_remaining_musd)


def open_account(tenant: str, *, daily_cap_usd: float, monthly_cap_usd: float, now: datetime) -> Account:
    """A fresh account for the period containing ``now``."""
    today = now.astimezone(UTC).date()
    return Account(
        tenant=tenant,
        daily_cap_musd=usd_to_musd(daily_cap_usd),
        monthly_cap_musd=usd_to_musd(monthly_cap_usd),
        day=today,
        month=today.replace(day=1),
    )


def set_caps(account: Account, *, daily_cap_usd: float, monthly_cap_usd: float) -> Account:
    """New hard caps; spend and holds stay (lowering a cap below the spend makes ``remaining`` negative)."""
    return replace(account, daily_cap_musd=usd_to_musd(daily_cap_usd), monthly_cap_musd=usd_to_musd(monthly_cap_usd))


def roll(account: Account, now: datetime) -> Account:
    """Start a new day (and month) when ``now`` is past the account's period; holds carry over."""
    today = now.astimezone(UTC).date()
    if today <= account.day:
        return account
    month = today.replace(day=1)
    return replace(
        account,
        day=today,
        day_spent_musd=0,
        month=month,
        month_spent_musd=0 if month > account.month else account.month_spent_musd,
    )


def reserve(account: Account, *, instance_id: str, price_per_h_usd: float, amount_usd: float, now: datetime) -> Account:
    """Hold ``amount_usd`` for a new instance billed at ``price_per_h_usd`` from ``now``.

    Raises ReservationRefusedError when the hold would cross the daily or monthly hard cap.
    """
    account = accrue(account, now)
    if instance_id in account.live_holds:
        raise ValueError(f"instance {instance_id} already has a reservation")
    amount = usd_to_musd(amount_usd)
    if amount < 0 or amount > account.remaining_musd:
        raise ReservationRefusedError(
            f"tenant {account.tenant}: reserving ${amount_usd:.4f} exceeds the remaining "
            f"${musd_to_usd(account.remaining_musd):.4f}"
        )
    hold = Hold(
        instance_id=instance_id,
        price_per_h_musd=usd_to_musd(price_per_h_usd),
        started_at=now,
        accrued_until=now,
        charged_musd=0,
        left_musd=amount,
    )
    return replace(account, holds={**account.live_holds, instance_id: hold})


def accrue(account: Account, now: datetime) -> Account:
    """Charge every live instance up to ``now``; a charge crossing midnight UTC is split between the two days."""
    while True:
        next_midnight = datetime.combine(account.day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        if now < next_midnight:
            return _accrue_within_period(account, now)
        account = roll(_accrue_within_period(account, next_midnight), next_midnight)


def _accrue_within_period(account: Account, until: datetime) -> Account:
    holds = dict(account.live_holds)
    increment_total = 0
    for instance_id, hold in holds.items():
        if until <= hold.accrued_until:
            continue
        charged = cost_musd(hold.price_per_h_musd, until - hold.started_at)
        increment = charged - hold.charged_musd
        holds[instance_id] = replace(
            hold, accrued_until=until, charged_musd=charged, left_musd=hold.left_musd - min(hold.left_musd, increment)
        )
        increment_total += increment
    return replace(
        account,
        holds=holds,
        day_spent_musd=account.day_spent_musd + increment_total,
        month_spent_musd=account.month_spent_musd + increment_total,
        total_spent_musd=account.total_spent_musd + increment_total,
    )


def settle(account: Account, *, instance_id: str, now: datetime) -> tuple[Account, int]:
    """Charge the instance up to ``now``, release what is left of its reservation; returns its whole bill."""
    account = accrue(account, now)
    hold = account.live_holds.get(instance_id)
    if hold is None:
        raise UnknownHoldError(f"tenant {account.tenant}: no reservation for instance {instance_id}")
    holds = {k: v for k, v in account.live_holds.items() if k != instance_id}
    return replace(account, holds=holds, settled_musd=account.settled_musd + hold.charged_musd), hold.charged_musd


def ledger_errors(account: Account) -> list[str]:
    """Every way the account fails to sum (empty when it is consistent)."""
    errors: list[str] = []
    holds = account.live_holds
    live_charges = sum(h.charged_musd for h in holds.values())
    if account.total_spent_musd != account.settled_musd + live_charges:
        errors.append("total spent differs from settled plus live charges")
    for cap, spent, remaining in (
        (account.daily_cap_musd, account.day_spent_musd, account.day_remaining_musd),
        (account.monthly_cap_musd, account.month_spent_musd, account.month_remaining_musd),
    ):
        if spent + account.reserved_musd + remaining != cap:
            errors.append("spent + reserved + remaining differs from the cap")
    for hold in holds.values():
        if hold.left_musd < 0:
            errors.append(f"hold {hold.instance_id} is negative")
        if hold.charged_musd != cost_musd(hold.price_per_h_musd, hold.accrued_until - hold.started_at):
            errors.append(f"hold {hold.instance_id} charge differs from price x lifetime")
    if not account.day_spent_musd <= account.month_spent_musd <= account.total_spent_musd:
        errors.append("a period's spend exceeds a longer period's")
    return errors


def budget_view(account: Account) -> BudgetView:
    """What the policy sees of the account."""
    return BudgetView(
        tenant=account.tenant,
        day_spent_usd=musd_to_usd(account.day_spent_musd),
        month_spent_usd=musd_to_usd(account.month_spent_musd),
        reserved_usd=musd_to_usd(account.reserved_musd),
    )


class Ledger:
    """In-memory ledger of several tenants (the simulator's and the tests'); same rules as the database one."""

    def __init__(self) -> None:
        """An empty ledger; open tenants with :meth:`open`."""
        self.accounts: dict[str, Account] = {}

    def open(self, tenant: str, *, daily_cap_usd: float, monthly_cap_usd: float, now: datetime) -> None:
        """Start an account for ``tenant``."""
        self.accounts[tenant] = open_account(
            tenant, daily_cap_usd=daily_cap_usd, monthly_cap_usd=monthly_cap_usd, now=now
        )

    def reserve(
        self, tenant: str, *, instance_id: str, price_per_h_usd: float, amount_usd: float, now: datetime
    ) -> None:
        """Hold money for a rental; raises ReservationRefusedError past a hard cap."""
        self.accounts[tenant] = reserve(
            self.accounts[tenant],
            instance_id=instance_id,
            price_per_h_usd=price_per_h_usd,
            amount_usd=amount_usd,
            now=now,
        )

    def accrue(self, now: datetime) -> None:
        """Charge every live instance of every tenant up to ``now``."""
        self.accounts = {tenant: accrue(account, now) for tenant, account in self.accounts.items()}

    def settle(self, tenant: str, *, instance_id: str, now: datetime) -> float:
        """Close an instance's charges; returns its whole bill in dollars."""
        self.accounts[tenant], bill = settle(self.accounts[tenant], instance_id=instance_id, now=now)
        return musd_to_usd(bill)

    def view(self, tenant: str) -> BudgetView:
        """The tenant's money as the policy sees it."""
        return budget_view(self.accounts[tenant])

    def hold_left_usd(self, tenant: str, instance_id: str) -> float:
        """What is left of an instance's reservation (0 when it has none)."""
        hold = self.accounts[tenant].live_holds.get(instance_id)
        return musd_to_usd(hold.left_musd) if hold else 0.0

    def total_spent_usd(self) -> float:
        """Everything charged, all tenants."""
        return musd_to_usd(sum(a.total_spent_musd for a in self.accounts.values()))
