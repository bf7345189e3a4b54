"""Cost-budgeted autoscaler: the pure policy (:func:`decide`), offer choice and the budget ledger arithmetic.

Nothing in this package does I/O; the actuator turns provider and database state into a Snapshot and carries out
the actions, and the simulator in ``bench/`` drives the same function on a simulated market and clock.
"""

from orchestrator.scheduler.ledger import Ledger, ReservationRefusedError, reservation_usd
from orchestrator.scheduler.model import (
    Action,
    BudgetView,
    Destroy,
    DestroyReason,
    Fallback,
    FallbackReason,
    InstanceState,
    InstanceView,
    OfferFilters,
    OfferView,
    PendingWork,
    Rent,
    RentReason,
    Snapshot,
    TenantPolicy,
    ThroughputTable,
    Tier,
    Warn,
    WarnCode,
)
from orchestrator.scheduler.offers import RankedOffer, Rejection, load_throughput_table, rank_offers, rejection
from orchestrator.scheduler.policy import decide

__all__ = [
    "Action",
    "BudgetView",
    "Destroy",
    "DestroyReason",
    "Fallback",
    "FallbackReason",
    "InstanceState",
    "InstanceView",
    "Ledger",
    "OfferFilters",
    "OfferView",
    "PendingWork",
    "RankedOffer",
    "Rejection",
    "Rent",
    "RentReason",
    "ReservationRefusedError",
    "Snapshot",
    "TenantPolicy",
    "ThroughputTable",
    "Tier",
    "Warn",
    "WarnCode",
    "decide",
    "load_throughput_table",
    "rank_offers",
    "rejection",
    "reservation_usd",
]
