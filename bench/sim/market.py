"""A simulated GPU market: offers with Vast-like prices and attributes, boot times, and failures, from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass

from orchestrator.scheduler.model import OfferView

# GPU model -> ($/h low, $/h high) for one GPU, roughly the Vast.ai marketplace spread.
PRICE_RANGES_PER_H_USD = {
    "RTX 5090": (0.45, 0.80),
    "RTX 4090": (0.30, 0.55),
    "RTX 3090": (0.15, 0.30),
    "RTX A6000": (0.35, 0.50),
    "L40S": (0.60, 0.90),
    "A100 PCIE": (0.80, 1.20),
    "H100 PCIE": (1.60, 2.40),
}
DISK_GB = 60.0
# Vast storage is priced per GB-month; 0.15 $/GB-month for the requested disk.
STORAGE_PER_GB_MONTH_USD = 0.15
HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class MarketModel:
    """How the market behaves: boot times (lognormal), boot failures, deaths, offers vanishing at create."""

    boot_median_s: float = 150.0
    boot_sigma: float = 0.5
    boot_stuck_probability: float = 0.03
    boot_exit_probability: float = 0.03
    deaths_per_hour: float = 0.02
    offer_gone_probability: float = 0.05


@dataclass(frozen=True)
class InstanceFate:
    """What will happen to one rented instance, drawn when it is created."""

    boot_s: float
    stuck: bool
    exits_at_boot: bool
    dies_after_ready_s: float


def generate_offers(seed: int, count: int = 120, first_id: int = 1000) -> list[OfferView]:
    """``count`` offers over the GPU models above, with the mix of attributes that tenant filters meet."""
    rng = random.Random(f"offers-{seed}")
    return [random_offer(rng, first_id + index) for index in range(count)]


def random_offer(rng: random.Random, offer_id: int) -> OfferView:
    """One offer; its machine id equals its offer id (one offer per machine)."""
    gpu = rng.choice(sorted(PRICE_RANGES_PER_H_USD))
    num_gpus = 1 if rng.random() < 0.7 else rng.choice((2, 4))
    low, high = PRICE_RANGES_PER_H_USD[gpu]
    return OfferView(
        offer_id=offer_id,
        machine_id=offer_id,
        gpu_name=gpu,
        num_gpus=num_gpus,
        price_per_h_usd=round(rng.uniform(low, high) * num_gpus, 4),
        storage_per_h_usd=round(DISK_GB * STORAGE_PER_GB_MONTH_USD / HOURS_PER_MONTH, 5),
        cuda_max_good=rng.choice((12.2, 12.4, 12.6, 12.8, 12.8, 12.9, 13.0)),
        # Most Vast hosts score above 0.98; a fifth are flakier.
        reliability=round(rng.uniform(0.98, 0.9995) if rng.random() < 0.8 else rng.uniform(0.90, 0.98), 4),
        verified=rng.random() < 0.85,
        inet_down_mbps=rng.choice((100.0, 300.0, 800.0, 2000.0)),
        direct_port_count=0 if rng.random() < 0.2 else rng.choice((8, 16, 64)),
        disk_gb=rng.choice((32.0, 100.0, 500.0)),
    )


def draw_fate(model: MarketModel, seed: int, rental_index: int) -> InstanceFate:
    """The fate of the ``rental_index``-th rental; independent of the policy that rents it."""
    rng = random.Random(f"fate-{seed}-{rental_index}")
    failure = rng.random()
    return InstanceFate(
        boot_s=rng.lognormvariate(0.0, model.boot_sigma) * model.boot_median_s,
        stuck=failure < model.boot_stuck_probability,
        exits_at_boot=model.boot_stuck_probability
        <= failure
        < model.boot_stuck_probability + model.boot_exit_probability,
        dies_after_ready_s=rng.expovariate(model.deaths_per_hour / 3600.0)
        if model.deaths_per_hour > 0
        else float("inf"),
    )
