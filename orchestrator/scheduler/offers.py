"""Offer choice: a tenant's filters, then ranking by expected images/s per dollar (not by price alone)."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from orchestrator.scheduler.model import OfferFilters, OfferView, ThroughputTable

THROUGHPUT_FILE = Path("config/gpu_throughput.toml")


class Rejection(StrEnum):
    """Why an offer is not acceptable to a tenant (the first failing check)."""

    EXCLUDED_MACHINE = "excluded_machine"
    GPU_NAME = "gpu_name"
    UNKNOWN_THROUGHPUT = "unknown_throughput"
    CUDA = "cuda"
    RELIABILITY = "reliability"
    UNVERIFIED = "unverified"
    INET_DOWN = "inet_down"
    DIRECT_PORTS = "direct_ports"
    DISK = "disk"
    PRICE = "price"


@dataclass(frozen=True)
class RankedOffer:
    """An acceptable offer with what it is expected to deliver per dollar."""

    offer: OfferView
    images_per_s: float
    images_per_usd: float
    # Whether ``images_per_s`` was measured on our workers rather than estimated.
    measured: bool = False

    @property
    def usd_per_1000_images(self) -> float:
        """USD for 1000 images on this offer: ``1000 / images_per_usd``, so ranking by one is ranking by the other."""
        return 1000.0 / self.images_per_usd if self.images_per_usd > 0.0 else math.inf


def load_throughput_table(path: Path = THROUGHPUT_FILE) -> ThroughputTable:
    """Read the images/s table (``config/gpu_throughput.toml``); the ``cpu`` entry is not a GPU model.

    Entries with ``source = "measured"`` are marked measured; the others are estimates.
    """
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    figures = {name: float(entry["images_per_s"]) for name, entry in data["gpus"].items()}
    measured = frozenset(name for name, entry in data["gpus"].items() if entry.get("source") == "measured")
    reference = str(data["reference_gpu"])
    if figures.get(reference, 0.0) <= 0.0:
        raise ValueError(f"{path}: the reference GPU {reference!r} needs a positive images_per_s")
    return ThroughputTable(images_per_s=figures, reference_gpu=reference, measured=measured)


def rejection(
    offer: OfferView,
    *,
    filters: OfferFilters,
    max_price_per_h_usd: float,
    excluded_machines: frozenset[int],
    throughput: ThroughputTable,
) -> Rejection | None:
    """The first reason a tenant would not rent ``offer``, or None when it is acceptable."""
    # An if-chain, not a table of checks: the simulator calls this millions of times.
    if offer.machine_id in excluded_machines:
        return Rejection.EXCLUDED_MACHINE
    if filters.gpu_names and offer.gpu_name not in filters.gpu_names:
        return Rejection.GPU_NAME
    if throughput.images_per_s.get(offer.gpu_name, 0.0) <= 0.0:
        return Rejection.UNKNOWN_THROUGHPUT
    if offer.cuda_max_good < filters.min_cuda:
        return Rejection.CUDA
    if offer.reliability < filters.min_reliability:
        return Rejection.RELIABILITY
    if filters.verified_only and not offer.verified:
        return Rejection.UNVERIFIED
    if offer.inet_down_mbps < filters.min_inet_down_mbps:
        return Rejection.INET_DOWN
    if offer.direct_port_count < filters.min_direct_ports:
        return Rejection.DIRECT_PORTS
    if offer.disk_gb < filters.min_disk_gb:
        return Rejection.DISK
    if offer.total_per_h_usd > max_price_per_h_usd:
        return Rejection.PRICE
    return None


def rank_offers(
    offers: Iterable[OfferView],
    *,
    filters: OfferFilters,
    max_price_per_h_usd: float,
    excluded_machines: frozenset[int],
    throughput: ThroughputTable,
) -> list[RankedOffer]:
    """Acceptable offers, best images per dollar first; ties go to the more reliable, then the cheaper offer.

    The worker drives one GPU, so a multi-GPU offer is worth one GPU's images/s at the whole offer's price.
    """
    ranked = [
        _ranked(offer, throughput)
        for offer in offers
        if rejection(
            offer,
            filters=filters,
            max_price_per_h_usd=max_price_per_h_usd,
            excluded_machines=excluded_machines,
            throughput=throughput,
        )
        is None
    ]
    ranked.sort(key=lambda r: (-r.images_per_usd, -r.offer.reliability, r.offer.total_per_h_usd, r.offer.offer_id))
    return ranked


def _ranked(offer: OfferView, throughput: ThroughputTable) -> RankedOffer:
    images_per_s = throughput.images_per_s[offer.gpu_name]
    # An offer at $0/h would divide by zero; a free offer is simply the best.
    per_h = max(offer.total_per_h_usd, 1e-9)
    return RankedOffer(
        offer=offer,
        images_per_s=images_per_s,
        images_per_usd=images_per_s * 3600.0 / per_h,
        measured=offer.gpu_name in throughput.measured,
    )
