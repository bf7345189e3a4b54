"""Dollars per 1000 images: what an offer's hour buys at its GPU model's images/s, summarised per GPU model.

The same figure orders the scheduler's ranking: ``rank_offers`` sorts by images per dollar, and $ per 1000 images
is 1000 divided by it, so the best-ranked offer is the one with the lowest $ per 1000 images. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import median

from orchestrator.scheduler.model import SECONDS_PER_HOUR, OfferView, ThroughputTable
from orchestrator.scheduler.offers import RankedOffer

IMAGES_PER_UNIT = 1000.0


def usd_per_1000_images(price_per_h_usd: float, images_per_s: float) -> float:
    """USD for 1000 images on a GPU doing ``images_per_s``, rented at ``price_per_h_usd``.

    ``price / (images_per_s * 3600) * 1000``. Raises ValueError for images/s that are not positive (no figure means
    no cost, never a zero or infinite one) and for a negative price.
    """
    if not images_per_s > 0.0:
        raise ValueError(f"images_per_s must be positive, got {images_per_s!r}")
    if price_per_h_usd < 0.0:
        raise ValueError(f"price_per_h_usd must not be negative, got {price_per_h_usd!r}")
    return price_per_h_usd / (images_per_s * SECONDS_PER_HOUR) * IMAGES_PER_UNIT


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` (0..1) percentile of ``values``, interpolated linearly between the two nearest ranks.

    The same definition as numpy's default: rank ``fraction * (n - 1)`` of the sorted values.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within 0..1, got {fraction!r}")
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class GpuCost:
    """What the offers of one GPU model cost per hour and per 1000 images.

    Prices are ``total_per_h_usd`` (compute plus the requested disk), what the scheduler ranks by. The cost fields
    are None when the throughput table has no figure for the model.
    """

    gpu_name: str
    offers: int
    cheapest_per_h_usd: float
    p10_per_h_usd: float
    median_per_h_usd: float
    images_per_s: float | None
    measured: bool
    usd_per_1000_at_cheapest: float | None
    usd_per_1000_at_median: float | None


def summarize_costs(offers: Iterable[OfferView | RankedOffer], throughput: ThroughputTable) -> list[GpuCost]:
    """One :class:`GpuCost` per GPU model among ``offers``, in the order the models first appear.

    A ranked offer brings its own images/s and measured flag (the table it was ranked with); a plain offer's come
    from ``throughput``. Offers are taken as given: filter them (acceptance checks, one GPU per offer) beforehand.
    """
    prices: dict[str, list[float]] = {}
    figures: dict[str, tuple[float, bool]] = {}
    for item in offers:
        view = item.offer if isinstance(item, RankedOffer) else item
        prices.setdefault(view.gpu_name, []).append(view.total_per_h_usd)
        if isinstance(item, RankedOffer):
            figures.setdefault(view.gpu_name, (item.images_per_s, item.measured))
        elif throughput.images_per_s.get(view.gpu_name, 0.0) > 0.0:
            figures.setdefault(
                view.gpu_name, (throughput.images_per_s[view.gpu_name], view.gpu_name in throughput.measured)
            )
    return [_gpu_cost(name, values, figures.get(name)) for name, values in prices.items()]


def _gpu_cost(gpu_name: str, prices: list[float], figure: tuple[float, bool] | None) -> GpuCost:
    cheapest, middle = min(prices), median(prices)
    images_per_s, measured = figure if figure is not None else (None, False)
    return GpuCost(
        gpu_name=gpu_name,
        offers=len(prices),
        cheapest_per_h_usd=cheapest,
        p10_per_h_usd=percentile(prices, 0.10),
        median_per_h_usd=middle,
        images_per_s=images_per_s,
        measured=measured,
        usd_per_1000_at_cheapest=usd_per_1000_images(cheapest, images_per_s) if images_per_s else None,
        usd_per_1000_at_median=usd_per_1000_images(middle, images_per_s) if images_per_s else None,
    )
