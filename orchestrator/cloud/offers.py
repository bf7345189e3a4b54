"""Offer search as the scheduler sees it: query the provider with a tenant's filters, convert, rank, explain."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from orchestrator.providers.base import Offer, OfferFilters, Provider
from orchestrator.scheduler.model import OfferFilters as PolicyFilters
from orchestrator.scheduler.model import OfferView, ThroughputTable
from orchestrator.scheduler.offers import RankedOffer, Rejection, rank_offers, rejection

HOURS_PER_MONTH = 720.0  # Vast quotes storage per GB-month; it bills it per hour of a 30-day month


def provider_filters(filters: PolicyFilters, *, max_price_per_h_usd: float, excluded: frozenset[int]) -> OfferFilters:
    """The provider query for a tenant's filters (the provider narrows; the scheduler still checks everything)."""
    return OfferFilters(
        gpu_names=tuple(filters.gpu_names),
        min_cuda=filters.min_cuda,
        min_reliability=filters.min_reliability,
        verified_only=filters.verified_only,
        min_inet_down_mbps=filters.min_inet_down_mbps,
        min_direct_ports=filters.min_direct_ports,
        disk_gb=filters.min_disk_gb,
        max_dph_total=max_price_per_h_usd,
        excluded_machine_ids=excluded,
    )


def offer_view(offer: Offer, *, disk_gb: float) -> OfferView | None:
    """The scheduler's view of a provider offer; None for an id that is not a number (never rentable by us)."""
    try:
        offer_id = int(offer.id)
    except ValueError:
        return None
    storage_per_h = offer.storage_cost_per_gb_month * disk_gb / HOURS_PER_MONTH
    return OfferView(
        offer_id=offer_id,
        machine_id=offer.machine_id,
        gpu_name=offer.gpu_name,
        num_gpus=offer.num_gpus,
        # dph_total already includes the storage of the disk we asked the quote for.
        price_per_h_usd=max(offer.dph_total - storage_per_h, 0.0),
        storage_per_h_usd=storage_per_h,
        cuda_max_good=offer.cuda_max_good,
        reliability=offer.reliability,
        verified=offer.verified,
        inet_down_mbps=offer.inet_down_mbps,
        direct_port_count=offer.direct_port_count,
        disk_gb=offer.disk_space_gb,
    )


@dataclass(frozen=True)
class OfferPreview:
    """What a tenant would rent, best first, and how many offers were turned down for which reason."""

    ranked: list[RankedOffer]
    rejected: Counter[Rejection]
    searched: int


def preview_offers(
    provider: Provider,
    filters: PolicyFilters,
    *,
    max_price_per_h_usd: float,
    throughput: ThroughputTable,
    excluded: frozenset[int] = frozenset(),
) -> OfferPreview:
    """Search the provider and rank what comes back exactly as the scheduler would before renting."""
    found = provider.search_offers(
        provider_filters(filters, max_price_per_h_usd=max_price_per_h_usd, excluded=excluded)
    )
    views = [v for v in (offer_view(o, disk_gb=filters.min_disk_gb) for o in found) if v is not None]
    rejected: Counter[Rejection] = Counter()
    for view in views:
        reason = rejection(
            view,
            filters=filters,
            max_price_per_h_usd=max_price_per_h_usd,
            excluded_machines=excluded,
            throughput=throughput,
        )
        if reason is not None:
            rejected[reason] += 1
    ranked = rank_offers(
        views,
        filters=filters,
        max_price_per_h_usd=max_price_per_h_usd,
        excluded_machines=excluded,
        throughput=throughput,
    )
    return OfferPreview(ranked=ranked, rejected=rejected, searched=len(found))
