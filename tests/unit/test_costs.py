"""$ per 1000 images: the formula, the per-GPU summary, the ranking's figure, and bench/cost_per_1000.py end to end."""

from __future__ import annotations

import difflib
import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bench.cost_per_1000 import main
from orchestrator.providers.vast.client import VastClient
from orchestrator.providers.vast.provider import VastProvider
from orchestrator.scheduler.costs import percentile, summarize_costs, usd_per_1000_images
from orchestrator.scheduler.model import OfferFilters, ThroughputTable
from orchestrator.scheduler.offers import load_throughput_table, rank_offers
from tests.fakes.vast_server import UNIT_TEST_BASE_URL, FakeVast
from tests.fixtures.scheduler_factories import REPO_ROOT, offer

TABLE = ThroughputTable(
    images_per_s={"RTX 4090": 200.0, "RTX 5090": 240.0}, reference_gpu="RTX 4090", measured=frozenset({"RTX 5090"})
)
STORAGE_40_GB_PER_H = 0.15 * 40 / 720  # the fake's 0.15 $/GB-month for the 40 GB the bench prices by default


# -- the formula and the summary ------------------------------------------------------------------------------------


def test_usd_per_1000_images_is_the_hourly_price_over_the_images_made_in_an_hour() -> None:
    # 0.36 $/h at 200 images/s: 720,000 images an hour, so 1000 images cost 0.36 / 720 = 0.0005 $.
    assert usd_per_1000_images(0.36, 200.0) == pytest.approx(0.0005)
    assert usd_per_1000_images(2.0, 400.0) == pytest.approx(2.0 / 1440)
    assert usd_per_1000_images(0.0, 200.0) == 0.0


@pytest.mark.parametrize("images_per_s", [0.0, -5.0, float("nan")])
def test_usd_per_1000_images_refuses_images_per_second_that_are_not_positive(images_per_s: float) -> None:
    with pytest.raises(ValueError, match="images_per_s"):
        usd_per_1000_images(0.40, images_per_s)


def test_usd_per_1000_images_refuses_a_negative_price() -> None:
    with pytest.raises(ValueError, match="price"):
        usd_per_1000_images(-0.1, 200.0)


def test_percentile_interpolates_between_the_nearest_ranks() -> None:
    # Rank 0.1 * (5 - 1) = 0.4 of [1, 2, 3, 4, 5]: 1 + 0.4 * (2 - 1).
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.10) == pytest.approx(1.4)
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile([0.7], 0.10) == 0.7
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_the_summary_gives_each_gpu_model_its_price_spread_and_cost_per_1000_images() -> None:
    offers = [
        offer(1, price_per_h_usd=0.50, storage_per_h_usd=0.0),
        offer(2, price_per_h_usd=0.30, storage_per_h_usd=0.0),
        offer(3, gpu_name="RTX 5090", price_per_h_usd=0.70, storage_per_h_usd=0.02),
        offer(4, price_per_h_usd=0.70, storage_per_h_usd=0.0),
        offer(5, price_per_h_usd=0.40, storage_per_h_usd=0.0),
    ]

    costs = {cost.gpu_name: cost for cost in summarize_costs(offers, TABLE)}

    rtx4090 = costs["RTX 4090"]
    assert rtx4090.offers == 4
    assert rtx4090.cheapest_per_h_usd == 0.30
    assert rtx4090.median_per_h_usd == pytest.approx(0.45)  # (0.40 + 0.50) / 2
    assert rtx4090.p10_per_h_usd == pytest.approx(0.33)  # rank 0.3 of [0.30, 0.40, 0.50, 0.70]
    assert (rtx4090.images_per_s, rtx4090.measured) == (200.0, False)
    assert rtx4090.usd_per_1000_at_cheapest == pytest.approx(0.30 / 720)  # 200 images/s = 720,000 an hour
    assert rtx4090.usd_per_1000_at_median == pytest.approx(0.45 / 720)
    rtx5090 = costs["RTX 5090"]
    assert rtx5090.offers == 1
    assert rtx5090.cheapest_per_h_usd == rtx5090.median_per_h_usd == rtx5090.p10_per_h_usd == pytest.approx(0.72)
    assert (rtx5090.images_per_s, rtx5090.measured) == (240.0, True)
    assert rtx5090.usd_per_1000_at_cheapest == pytest.approx(0.72 / 864)  # 240 images/s = 864,000 an hour


def test_a_gpu_model_without_a_figure_is_counted_but_not_costed() -> None:
    (cost,) = summarize_costs([offer(1, gpu_name="L40S", price_per_h_usd=0.8)], TABLE)

    assert cost.offers == 1
    assert cost.images_per_s is None and not cost.measured
    assert cost.usd_per_1000_at_cheapest is None and cost.usd_per_1000_at_median is None


def test_ranked_offers_cost_what_the_scheduler_ranked_them_by() -> None:
    offers = [
        offer(1, price_per_h_usd=0.40, storage_per_h_usd=0.0),
        offer(2, gpu_name="RTX 5090", price_per_h_usd=0.60, storage_per_h_usd=0.0),
        offer(3, price_per_h_usd=0.35, storage_per_h_usd=0.01),
    ]
    ranked = rank_offers(
        offers, filters=OfferFilters(), max_price_per_h_usd=1.0, excluded_machines=frozenset(), throughput=TABLE
    )

    # Best images per dollar first is cheapest per 1000 images first.
    per_1000 = [r.usd_per_1000_images for r in ranked]
    assert [r.offer.offer_id for r in ranked] == [3, 1, 2]
    assert per_1000 == sorted(per_1000)
    assert ranked[0].usd_per_1000_images == pytest.approx(1000.0 / ranked[0].images_per_usd)
    assert ranked[0].usd_per_1000_images == pytest.approx(usd_per_1000_images(0.36, 200.0))
    assert ranked[2].usd_per_1000_images == pytest.approx(0.60 / 864)
    costs = {cost.gpu_name: cost for cost in summarize_costs(ranked, TABLE)}
    assert costs["RTX 4090"].usd_per_1000_at_cheapest == pytest.approx(ranked[0].usd_per_1000_images)
    assert costs["RTX 5090"].measured


def test_the_project_table_prices_both_h100_boards_under_vast_names_and_marks_them_estimates() -> None:
    path = REPO_ROOT / "config" / "gpu_throughput.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    table = load_throughput_table(path)

    for name in ("RTX 5090", "RTX 4090", "H100 SXM", "H100 PCIE"):
        assert table.images_per_s[name] > 0.0
    assert raw["gpus"]["H100 SXM"]["source"] == "estimate"


# -- bench/cost_per_1000.py -----------------------------------------------------------------------------------------


@pytest.fixture
def market() -> FakeVast:
    """Offers in the fake Vast market: two acceptable 4090s, a 5090 on an unreliable host, a two-GPU H100."""
    fake = FakeVast()
    fake.add_offer(101, machine_id=11, gpu_name="RTX 4090", dph_base=0.30)
    fake.add_offer(102, machine_id=12, gpu_name="RTX 4090", dph_base=0.50)
    fake.add_offer(103, machine_id=13, gpu_name="RTX 5090", dph_base=0.60, reliability=0.90)
    fake.add_offer(104, machine_id=14, gpu_name="H100 SXM", dph_base=4.00, num_gpus=2)
    return fake


def _saved_search(fake: FakeVast, path: Path, *, as_list: bool = False) -> Path:
    """What the fake's search API answers (rows with the live API's loose types), saved as a file."""
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    answer = fake.handle("POST", "/api/v0/bundles/", headers, json.dumps({"allocated_storage": 40}).encode())
    data = json.loads(answer.body)
    assert isinstance(data["offers"][0]["dph_total"], str)  # numbers arrive as strings, as on the live API
    path.write_text(json.dumps(data["offers"] if as_list else data), encoding="utf-8")
    return path


def _rows(output: str) -> dict[str, list[str]]:
    """The report's lines keyed by GPU model (the model's words joined back)."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        for name in ("RTX 5090", "RTX 4090", "H100 SXM", "H100 PCIE"):
            if line.startswith(name):
                rows[name] = line.removeprefix(name).split()
    return rows


def _worker_json(path: Path, *, device: str = "cuda", device_name: str = "NVIDIA GeForce RTX 4090") -> Path:
    """A bench/worker_throughput.py --json file: the shared photos first, so the corpus preference shows."""
    results: list[dict[str, Any]] = [
        {"corpus": "shared photos", "analyzers": "full pipeline", "images": 16, "batched_images_per_s": 150.0},
        {"corpus": "generated 1080p", "analyzers": "clip", "images": 16, "batched_images_per_s": 900.0},
        {"corpus": "generated 1080p", "analyzers": "full pipeline", "images": 16, "batched_images_per_s": 180.0},
    ]
    figures = {"device": device, "device_name": device_name, "date": "2026-12-01", "results": results}
    path.write_text(json.dumps(figures), encoding="utf-8")
    return path


@pytest.mark.parametrize("as_list", [False, True])
def test_bench_reports_each_gpu_model_from_a_saved_offer_file_and_invents_nothing(
    market: FakeVast, tmp_path: Path, capsys: pytest.CaptureFixture[str], as_list: bool
) -> None:
    offers = _saved_search(market, tmp_path / "offers.json", as_list=as_list)

    assert main(["--offers", str(offers)]) == 0

    output = capsys.readouterr().out
    rows = _rows(output)
    # Two 4090s at 0.30 and 0.50 $/h plus 40 GB of storage; the table's 200 images/s (720,000 an hour).
    cheapest, median = 0.30 + STORAGE_40_GB_PER_H, 0.40 + STORAGE_40_GB_PER_H
    assert rows["RTX 4090"][:3] == ["2", f"{cheapest:.3f}", f"{0.30 + 0.1 * 0.20 + STORAGE_40_GB_PER_H:.3f}"]
    assert rows["RTX 4090"][3:6] == [f"{median:.3f}", "200.0", "estimate"]
    assert rows["RTX 4090"][6:] == [f"{cheapest / 720:.6f}", f"{median / 720:.6f}"]
    assert rows["RTX 5090"] == ["no", "acceptable", "offers", "(1", "refused", "by", "the", "filters)"]
    assert rows["H100 SXM"] == ["no", "offers", "found"]
    assert rows["H100 PCIE"] == ["no", "offers", "found"]
    assert "refused RTX 5090 offers: reliability: 1" in output
    assert "left out 1 offers with more than one GPU" in output
    assert "ESTIMATES, not measured, for: RTX 5090 (260), RTX 4090 (200), H100 SXM (390), H100 PCIE (300)" in output


def test_bench_unfiltered_counts_every_one_gpu_offer(
    market: FakeVast, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    offers = _saved_search(market, tmp_path / "offers.json")

    assert main(["--offers", str(offers), "--unfiltered", "--gpus", "RTX 5090"]) == 0

    rows = _rows(capsys.readouterr().out)
    assert rows["RTX 5090"][:2] == ["1", f"{0.60 + STORAGE_40_GB_PER_H:.3f}"]
    assert rows["RTX 5090"][-1] == f"{(0.60 + STORAGE_40_GB_PER_H) / 936:.6f}"  # 260 images/s: 936,000 an hour


def test_bench_live_searches_the_provider_per_gpu_model(market: FakeVast, capsys: pytest.CaptureFixture[str]) -> None:
    provider = VastProvider(VastClient(market.api_key, UNIT_TEST_BASE_URL, transport=market.transport()))

    assert main(["--live", "--gpus", "RTX 4090", "H100 SXM"], provider=provider) == 0

    output = capsys.readouterr().out
    rows = _rows(output)
    assert rows["RTX 4090"][:2] == ["2", f"{0.30 + STORAGE_40_GB_PER_H:.3f}"]
    assert rows["H100 SXM"] == ["no", "offers", "found"]  # the two-GPU offer is not asked for
    searches = [r for r in market.requests if r.path == "/api/v0/bundles/"]
    assert [s.body["gpu_name"] for s in searches] == [{"in": ["RTX 4090"]}, {"in": ["H100 SXM"]}]
    assert all(s.body["num_gpus"] == {"eq": 1} and "dph_total" not in s.body for s in searches)
    assert "live Vast.ai prices" in output


def test_bench_live_without_an_api_key_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.settings import get_settings

    monkeypatch.setenv("ORCH_VAST_API_KEY", "")
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit, match="ORCH_VAST_API_KEY"):
            main(["--live"])
    finally:
        get_settings.cache_clear()


def test_bench_measured_figure_replaces_the_estimate_for_that_model_only(
    market: FakeVast, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    offers = _saved_search(market, tmp_path / "offers.json")
    worker = _worker_json(tmp_path / "worker.json")

    assert main(["--offers", str(offers), "--measured", str(worker), "RTX 4090"]) == 0

    output = capsys.readouterr().out
    rows = _rows(output)
    # The generated-1080p full pipeline (180 images/s = 648,000 an hour), not the shared photos or one analyzer.
    cheapest, median = 0.30 + STORAGE_40_GB_PER_H, 0.40 + STORAGE_40_GB_PER_H
    assert rows["RTX 4090"][4:] == ["180.0", "measured", f"{cheapest / 648:.6f}", f"{median / 648:.6f}"]
    assert "for: RTX 5090 (260), H100 SXM (390), H100 PCIE (300)" in output


@pytest.mark.parametrize(
    ("device", "device_name", "message"),
    [("cpu", "x86_64", "not on a CUDA GPU"), ("cuda", "NVIDIA H100 80GB HBM3", "does not look like 'RTX 4090'")],
)
def test_bench_refuses_a_measurement_from_another_device(
    tmp_path: Path, device: str, device_name: str, message: str
) -> None:
    worker = _worker_json(tmp_path / "worker.json", device=device, device_name=device_name)

    with pytest.raises(SystemExit, match=message):
        main(["--measured", str(worker), "RTX 4090", "--write-table", "--throughput", str(tmp_path / "t.toml")])


def test_write_table_records_the_measurement_and_keeps_every_other_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "gpu_throughput.toml"
    shutil.copy(REPO_ROOT / "config" / "gpu_throughput.toml", table)
    before = table.read_text(encoding="utf-8")
    worker = _worker_json(tmp_path / "worker.json", device_name="NVIDIA H100 80GB HBM3")

    argv = ["--measured", str(worker), "H100 SXM", "--write-table", "--throughput", str(table)]
    assert main(argv) == 0

    after = table.read_text(encoding="utf-8")
    loaded = load_throughput_table(table)
    assert loaded.images_per_s["H100 SXM"] == 180.0
    assert loaded.measured == {"H100 SXM"}
    raw_before, raw_after = tomllib.loads(before), tomllib.loads(after)
    assert raw_after["gpus"]["H100 SXM"] == {"images_per_s": 180.0, "source": "measured"}
    del raw_before["gpus"]["H100 SXM"], raw_after["gpus"]["H100 SXM"]
    assert raw_after == raw_before
    # A text edit: only the entry's own lines change; the estimate's comment goes, every other comment stays.
    changes = [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    removed = [line[1:] for line in changes if line.startswith("-")]
    added = [line[1:] for line in changes if line.startswith("+")]
    assert removed[0] == "images_per_s = 390.0"
    assert removed[1].startswith("# About 1.3x the H100 PCIE") and removed[2].startswith("# two H100 boards")
    assert removed[3:] == ['source = "estimate"']
    assert added[0].startswith("# Measured 2026-12-01 on NVIDIA H100 80GB HBM3: worker.json, generated 1080p")
    assert added[1].startswith("# Written by: python bench/cost_per_1000.py --measured")
    assert added[2:] == ["images_per_s = 180.00", 'source = "measured"']
    assert "wrote H100 SXM = 180.00 images/s (measured)" in capsys.readouterr().out


def test_write_table_adds_a_model_the_table_does_not_have(tmp_path: Path) -> None:
    table = tmp_path / "gpu_throughput.toml"
    shutil.copy(REPO_ROOT / "config" / "gpu_throughput.toml", table)
    worker = _worker_json(tmp_path / "worker.json", device_name="NVIDIA GeForce RTX 5080")

    assert main(["--measured", str(worker), "RTX 5080", "--write-table", "--throughput", str(table)]) == 0

    raw = tomllib.loads(table.read_text(encoding="utf-8"))
    assert raw["gpus"]["RTX 5080"] == {"images_per_s": 180.0, "source": "measured"}
    assert raw["cpu"] == {"images_per_s": 5.43, "source": "measured"}
    assert load_throughput_table(table).measured == {"RTX 5080"}


def test_offers_search_shows_dollars_per_1000_images_beside_images_per_dollar(
    market: FakeVast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.db.session import reset_engines
    from orchestrator.settings import get_settings

    provider = VastProvider(VastClient(market.api_key, UNIT_TEST_BASE_URL, transport=market.transport()))
    monkeypatch.setattr(VastProvider, "from_settings", classmethod(lambda cls, settings: provider))
    monkeypatch.setenv("ORCH_VAST_API_KEY", market.api_key)
    monkeypatch.setenv("ORCH_DATA_DIR", str(tmp_path))  # an empty database: the table's estimates alone
    reset_engines()
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["offers", "search", "--gpu", "RTX 4090"], env={"COLUMNS": "220"})
    finally:
        reset_engines()
        get_settings.cache_clear()

    assert result.exit_code == 0, result.output
    assert "$ / 1000 images" in result.output and "images per $" in result.output
    rows = [line.strip("│ ").split("│") for line in result.output.splitlines() if "RTX 4090" in line]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert [row[0] for row in cells] == ["101", "102"]
    # 0.30 $/h plus 40 GB of storage at 200 images/s (720,000 an hour), and its images per dollar inverted.
    # (The fake quotes dph_total to six decimals, hence the tolerance.)
    assert float(cells[0][5].replace(",", "")) == pytest.approx(720_000 / (0.30 + STORAGE_40_GB_PER_H), rel=1e-5)
    assert float(cells[0][6]) == pytest.approx((0.30 + STORAGE_40_GB_PER_H) / 720, abs=1e-6)
