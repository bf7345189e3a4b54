"""The scheduler's own vocabulary: what one tick sees (a Snapshot) and what it may do (Actions).

Everything here is a frozen value. The actuator converts provider and database objects into these views, so the
policy never touches I/O and the simulator can drive it with a simulated market and clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

SECONDS_PER_HOUR = 3600.0


class Tier(StrEnum):
    """Where a tenant's batches may execute, in the tenant's order of preference."""

    CLOUD = "cloud"
    LOCAL = "local"
    CPU = "cpu"


class InstanceState(StrEnum):
    """A rented instance as the scheduler sees it.

    LOADING and RUNNING are booting (RUNNING: container up, worker not yet healthy); READY answers /healthz with the
    expected models. The remaining states are failures the instance never recovers from: FAILED covers an OCI error
    in the status message, STOPPED an outbid instance (it still bills storage).
    """

    LOADING = "loading"
    RUNNING = "running"
    READY = "ready"
    EXITED = "exited"
    UNKNOWN = "unknown"
    OFFLINE = "offline"
    STOPPED = "stopped"
    FAILED = "failed"


BOOTING_STATES = frozenset({InstanceState.LOADING, InstanceState.RUNNING})
BROKEN_STATES = frozenset(
    {InstanceState.EXITED, InstanceState.UNKNOWN, InstanceState.OFFLINE, InstanceState.STOPPED, InstanceState.FAILED}
)


class RentReason(StrEnum):
    """Why a rental was decided."""

    MIN_INSTANCES = "min_instances"
    BACKLOG = "backlog"
    WAITING = "waiting"


class DestroyReason(StrEnum):
    """Why an instance is destroyed (never stopped: a stopped Vast instance still bills storage)."""

    IDLE = "idle"
    HARD_CAP = "hard_cap"
    BOOT_TIMEOUT = "boot_timeout"
    BROKEN = "broken"
    OVER_MAX = "over_max"
    NO_POLICY = "no_policy"


class WarnCode(StrEnum):
    """Closed set of warnings the scheduler raises for a tenant."""

    SOFT_CAP = "soft_cap"
    HARD_CAP = "hard_cap"
    NO_OFFERS = "no_offers"
    PAUSED = "paused"


class FallbackReason(StrEnum):
    """Why a tenant's batches go to a tier after the cloud."""

    CLOUD_NOT_ALLOWED = "cloud_not_allowed"
    WAITED_TOO_LONG = "waited_too_long"
    BUDGET = "budget"
    NO_OFFERS = "no_offers"


@dataclass(frozen=True)
class OfferFilters:
    """Which offers a tenant accepts. Empty ``gpu_names`` accepts every GPU model."""

    gpu_names: tuple[str, ...] = ("RTX 5090", "RTX 4090")
    # Blackwell (sm_120) images need CUDA 12.8 on the host driver.
    min_cuda: float = 12.8
    min_reliability: float = 0.98
    verified_only: bool = True
    min_inet_down_mbps: float = 200.0
    min_direct_ports: int = 1
    min_disk_gb: float = 40.0


@dataclass(frozen=True)
class TenantPolicy:
    """One tenant's scheduling and budget settings."""

    tenant: str
    min_instances: int = 0
    max_instances: int = 4
    # A further instance is rented only while it would get at least this much work (reference-GPU seconds), so
    # its boot and idle tail stay a small share of what it costs.
    scale_up_threshold_gpu_s: float = 900.0
    # A further instance is rented only while its expected cost (its share of the work, its boot and its idle
    # tail at its price) stays within this fraction above what that share costs at the best price per image.
    max_overhead_ratio: float = 0.25
    # A backlog smaller than the threshold still gets one instance once its oldest batch waited this long.
    scale_up_wait_s: float = 60.0
    idle_timeout_s: float = 120.0
    max_price_per_h_usd: float = 1.0
    daily_cap_usd: float = 20.0
    monthly_cap_usd: float = 200.0
    # Compared with the month's spend plus reservations: past it no new rentals, and a warning.
    soft_cap_usd: float = 150.0
    tiers: tuple[Tier, ...] = (Tier.CLOUD, Tier.LOCAL, Tier.CPU)
    max_gpu_wait_s: float = 900.0
    # Reservation before a rental covers this much runtime (storage included).
    min_runtime_s: float = 600.0
    # A booting instance past this age is destroyed and its machine excluded.
    boot_deadline_s: float = 900.0
    filters: OfferFilters = field(default_factory=OfferFilters)


@dataclass(frozen=True)
class OfferView:
    """One rentable offer. Prices are per hour for the whole offer; the worker uses one GPU of it."""

    offer_id: int
    machine_id: int
    gpu_name: str
    num_gpus: int
    price_per_h_usd: float
    # Storage for the requested disk, billed from creation until destroy.
    storage_per_h_usd: float
    cuda_max_good: float
    reliability: float
    verified: bool
    inet_down_mbps: float
    direct_port_count: int
    disk_gb: float

    @property
    def total_per_h_usd(self) -> float:
        """Compute plus storage, what an hour of this offer costs."""
        return self.price_per_h_usd + self.storage_per_h_usd


@dataclass(frozen=True)
class InstanceView:
    """One live instance row (created, not yet destroyed)."""

    instance_id: str
    tenant: str
    state: InstanceState
    gpu_name: str
    machine_id: int
    price_per_h_usd: float
    created_at: datetime
    ready_at: datetime | None = None
    last_busy_at: datetime | None = None
    in_flight_batches: int = 0
    # What is left of the instance's reservation; accrual draws on it before the tenant's remaining budget.
    hold_left_usd: float = 0.0


@dataclass(frozen=True)
class PendingWork:
    """A tenant's queued work: estimated seconds on the throughput table's reference GPU."""

    tenant: str
    gpu_s: float
    batches: int
    oldest_wait_s: float


@dataclass(frozen=True)
class BudgetView:
    """A tenant's money: spend in the current day and month, and reservations held for live instances."""

    tenant: str
    day_spent_usd: float
    month_spent_usd: float
    reserved_usd: float


@dataclass(frozen=True)
class ThroughputTable:
    """Measured (or estimated) images/s per GPU model and the reference model that GPU-seconds are counted in."""

    images_per_s: Mapping[str, float]
    reference_gpu: str
    # GPU models whose figure is measured (on our workers); the others are estimates.
    measured: frozenset[str] = frozenset()

    def speed(self, gpu_name: str) -> float:
        """How many reference-GPU seconds of work one second of ``gpu_name`` does (0 for an unknown model)."""
        return self.images_per_s.get(gpu_name, 0.0) / self.images_per_s[self.reference_gpu]


@dataclass(frozen=True)
class Snapshot:
    """Everything one scheduler tick decides on."""

    now: datetime
    tick_s: float
    tenants: Mapping[str, TenantPolicy]
    pending: Mapping[str, PendingWork]
    instances: tuple[InstanceView, ...]
    offers: tuple[OfferView, ...]
    budgets: Mapping[str, BudgetView]
    excluded_machines: frozenset[int]
    throughput: ThroughputTable
    # Used to judge whether a further instance would finish booting while work is left for it.
    expected_boot_s: float = 180.0


@dataclass(frozen=True)
class Rent:
    """Reserve ``reservation_usd`` for the tenant, then create an instance from the offer."""

    tenant: str
    offer_id: int
    machine_id: int
    gpu_name: str
    price_per_h_usd: float
    reservation_usd: float
    reason: RentReason


@dataclass(frozen=True)
class Destroy:
    """Destroy an instance and settle its money; ``exclude_machine`` keeps its machine out of later rentals."""

    instance_id: str
    tenant: str
    machine_id: int
    reason: DestroyReason
    exclude_machine: bool = False


@dataclass(frozen=True)
class Warn:
    """Tell the tenant (dashboard, log) that something limits its work."""

    tenant: str
    code: WarnCode
    message: str


@dataclass(frozen=True)
class Fallback:
    """Route the tenant's waiting batches to ``tier`` instead of waiting for the cloud."""

    tenant: str
    tier: Tier
    reason: FallbackReason


Action = Rent | Destroy | Warn | Fallback
