"""`orchestrator offers search` against the fake Vast.ai: what would be rented, ranked by images per dollar."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.fakes.vast_server import FakeVast


@pytest.fixture
def market(fake_vast: FakeVast, monkeypatch: pytest.MonkeyPatch) -> FakeVast:
    """The fake market with a cheap slow GPU, a pricier fast one, and offers the filters must refuse."""
    fake_vast.add_offer(103, machine_id=13, gpu_name="RTX 3090", dph_base=0.12)
    fake_vast.add_offer(104, machine_id=14, gpu_name="RTX 5090", dph_base=0.55, reliability=0.90)
    fake_vast.add_offer(105, machine_id=15, gpu_name="RTX 5090", dph_base=0.48, cuda_max_good=12.4)
    fake_vast.add_offer(106, machine_id=16, gpu_name="RTX 4090", dph_base=2.50)
    monkeypatch.setenv("ORCH_VAST_API_URL", fake_vast.url)
    monkeypatch.setenv("ORCH_VAST_API_KEY", fake_vast.api_key)
    from orchestrator.settings import get_settings

    get_settings.cache_clear()
    return fake_vast


def test_offers_search_ranks_acceptable_offers_by_images_per_dollar_and_explains_refusals(market: FakeVast) -> None:
    result = CliRunner().invoke(
        app, ["offers", "search", "--gpu", "RTX 5090", "--gpu", "RTX 4090"], env={"COLUMNS": "200"}
    )

    assert result.exit_code == 0, result.output
    rows = [line.strip("│ ").split() for line in result.output.splitlines() if "RTX" in line]
    # The 4090 gives more images per dollar than the faster but pricier 5090; the unreliable 5090, the one with an
    # old CUDA, the over-priced 4090 and the 3090 (not asked for) are not offered.
    assert [row[0] for row in rows] == ["101", "102"], result.output
    assert "0.358" in rows[0]  # 0.35 $/h plus 40 GB at 0.15 $/GB-month
    assert "2 acceptable" in result.output
    searches = [r for r in market.requests if r.path.startswith("/api/v0/bundles")]
    assert searches and searches[-1].method == "POST"


def test_offers_search_without_an_api_key_says_how_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_VAST_API_KEY", "")
    from orchestrator.settings import get_settings

    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["offers", "search"])
    assert result.exit_code == 1
    assert "ORCH_VAST_API_KEY" in result.output
