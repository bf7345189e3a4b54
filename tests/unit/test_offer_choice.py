"""Offer choice: every tenant filter rejects with its reason; ranking is images per dollar, not price."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from orchestrator.scheduler.model import OfferFilters
from orchestrator.scheduler.offers import Rejection, load_throughput_table, rank_offers, rejection
from tests.fixtures.scheduler_factories import REPO_ROOT, offer, throughput

FILTERS = OfferFilters(gpu_names=("RTX 5090", "RTX 4090"), min_cuda=12.8, min_reliability=0.98)


def rank(offers: list[Any], *, excluded: frozenset[int] = frozenset(), max_price: float = 1.0) -> list[int]:
    ranked = rank_offers(
        offers, filters=FILTERS, max_price_per_h_usd=max_price, excluded_machines=excluded, throughput=throughput()
    )
    return [r.offer.offer_id for r in ranked]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"gpu_name": "RTX 3090"}, Rejection.GPU_NAME),
        ({"cuda_max_good": 12.4}, Rejection.CUDA),
        ({"reliability": 0.95}, Rejection.RELIABILITY),
        ({"verified": False}, Rejection.UNVERIFIED),
        ({"inet_down_mbps": 100.0}, Rejection.INET_DOWN),
        ({"direct_port_count": 0}, Rejection.DIRECT_PORTS),
        ({"disk_gb": 20.0}, Rejection.DISK),
        ({"price_per_h_usd": 0.995}, Rejection.PRICE),
    ],
)
def test_each_filter_rejects_an_offer_with_its_reason(changes: dict[str, Any], reason: Rejection) -> None:
    candidate = offer(**changes)
    found = rejection(
        candidate, filters=FILTERS, max_price_per_h_usd=1.0, excluded_machines=frozenset(), throughput=throughput()
    )
    assert found == reason
    assert rank([candidate]) == []


def test_an_offer_meeting_every_filter_is_accepted() -> None:
    good = offer()
    assert (
        rejection(
            good, filters=FILTERS, max_price_per_h_usd=1.0, excluded_machines=frozenset(), throughput=throughput()
        )
        is None
    )


def test_machines_that_failed_before_are_excluded() -> None:
    assert rank([offer(1, machine_id=77), offer(2, machine_id=78)], excluded=frozenset({77})) == [2]


def test_a_gpu_missing_from_the_throughput_table_is_not_rented() -> None:
    anything = OfferFilters(gpu_names=())
    found = rejection(
        offer(gpu_name="GTX 1080"),
        filters=anything,
        max_price_per_h_usd=1.0,
        excluded_machines=frozenset(),
        throughput=throughput(),
    )
    assert found == Rejection.UNKNOWN_THROUGHPUT


def test_the_price_ceiling_counts_storage() -> None:
    # 0.98 compute + 0.03 storage = 1.01 $/h, over a 1.00 ceiling.
    assert rank([offer(price_per_h_usd=0.98, storage_per_h_usd=0.03)]) == []


def test_ranking_is_by_images_per_dollar_not_by_price() -> None:
    table = throughput()
    cheap_slow = offer(1, gpu_name="RTX 4090", price_per_h_usd=0.50, storage_per_h_usd=0.0)
    # A 5090 that costs more per hour but less per image than the 4090.
    dear_fast = offer(2, gpu_name="RTX 5090", price_per_h_usd=0.55, storage_per_h_usd=0.0)
    per_dollar_4090 = table.images_per_s["RTX 4090"] / 0.50
    per_dollar_5090 = table.images_per_s["RTX 5090"] / 0.55
    assert per_dollar_5090 > per_dollar_4090, "the test's premise: the 5090 offer is the better value"
    assert rank([cheap_slow, dear_fast]) == [2, 1]


def test_equal_value_goes_to_the_more_reliable_offer() -> None:
    shaky = offer(1, reliability=0.985)
    steady = offer(2, reliability=0.999)
    assert rank([shaky, steady]) == [2, 1]


def test_a_multi_gpu_offer_is_worth_one_gpu_at_the_whole_price() -> None:
    ranked = rank_offers(
        [offer(1, num_gpus=2, price_per_h_usd=0.80), offer(2, price_per_h_usd=0.45)],
        filters=FILTERS,
        max_price_per_h_usd=1.0,
        excluded_machines=frozenset(),
        throughput=throughput(),
    )
    assert [r.offer.offer_id for r in ranked] == [2, 1]
    assert ranked[0].images_per_s == ranked[1].images_per_s == throughput().images_per_s["RTX 4090"]


def test_throughput_table_labels_every_figure_and_names_a_reference() -> None:
    path = REPO_ROOT / "config" / "gpu_throughput.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    table = load_throughput_table(path)
    assert table.speed(table.reference_gpu) == 1.0
    assert all(entry["source"] in ("estimate", "measured") for entry in raw["gpus"].values())
    assert raw["cpu"]["source"] == "measured"
    assert "cpu" not in table.images_per_s
    assert table.speed("RTX 5090") > table.speed("RTX 4090") > table.speed("RTX 3090") > 0.0


def test_a_reference_gpu_without_a_figure_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "table.toml"
    path.write_text('reference_gpu = "RTX 9999"\n[gpus."RTX 4090"]\nimages_per_s = 10.0\n', encoding="utf-8")
    with pytest.raises(ValueError, match="reference GPU"):
        load_throughput_table(path)
