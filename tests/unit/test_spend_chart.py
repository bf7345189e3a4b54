"""The server-drawn spend chart: bar geometry, money ticks, time labels and the accessible summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.api.dashboard.charts import HEIGHT, MARGIN_BOTTOM, MARGIN_TOP, bar_chart, nice_ceiling
from orchestrator.spend import Bucket, SpendPoint

START = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


def hours(*values: float) -> list[SpendPoint]:
    return [SpendPoint(START + timedelta(hours=n), v) for n, v in enumerate(values)]


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0.0, 1.0), (0.03, 0.05), (0.7, 1.0), (1.0, 1.0), (1.2, 2.0), (2.2, 2.5), (3.0, 5.0), (7.5, 10.0), (180, 200)],
)
def test_the_scale_rounds_up_to_a_readable_number(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == pytest.approx(ceiling)


def test_bars_are_proportional_to_spend_against_the_rounded_maximum() -> None:
    chart = bar_chart(hours(0.0, 1.0, 2.0, 0.5), bucket=Bucket.HOUR, title="t")

    plot_height = HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    assert [b.height for b in chart.bars] == pytest.approx([0.0, plot_height / 2, plot_height, plot_height / 4])
    assert all(b.y + b.height == pytest.approx(chart.bottom) for b in chart.bars), "bars stand on the axis"
    xs = [b.x for b in chart.bars]
    assert xs == sorted(xs) and chart.bars[0].x >= chart.left and chart.bars[-1].x + chart.bars[-1].width <= chart.right


def test_every_bar_and_the_chart_say_what_they_show() -> None:
    chart = bar_chart(hours(0.25, 1.5), bucket=Bucket.HOUR, title="Spend per hour, last 48 hours")

    assert [b.label for b in chart.bars] == ["2026-11-20 00:00 UTC", "2026-11-20 01:00 UTC"]
    assert [b.value for b in chart.bars] == [0.25, 1.5]
    assert chart.description == (
        "Spend per hour from 2026-11-20 00:00 UTC to 2026-11-20 01:00 UTC: $1.75 in all, at most $1.50 in one hour."
    )


def test_money_ticks_run_from_zero_to_the_scale_top_to_bottom() -> None:
    chart = bar_chart(hours(3.2, 4.1), bucket=Bucket.HOUR, title="t")

    assert [t.text for t in chart.y_ticks] == ["$0.00", "$1.25", "$2.50", "$3.75", "$5.00"]
    assert chart.y_ticks[0].at == pytest.approx(chart.bottom) and chart.y_ticks[-1].at == pytest.approx(chart.top)


def test_a_long_series_gets_a_few_time_labels_ending_at_the_newest_bucket() -> None:
    points = [SpendPoint(START + timedelta(days=n), 0.0) for n in range(60)]
    chart = bar_chart(points, bucket=Bucket.DAY, title="t")

    assert 4 <= len(chart.x_labels) <= 7
    assert chart.x_labels[-1].text == (START + timedelta(days=59)).strftime("%b %d")
    assert chart.bars[-1].label == "2027-01-18 (UTC)"


def test_no_spend_draws_flat_bars_on_a_one_dollar_scale() -> None:
    chart = bar_chart(hours(0.0, 0.0, 0.0), bucket=Bucket.HOUR, title="t")

    assert all(b.height == 0 for b in chart.bars)
    assert chart.y_ticks[-1].text == "$1.00" and chart.total == 0 and chart.peak == 0


def test_an_empty_series_is_described_as_such() -> None:
    chart = bar_chart([], bucket=Bucket.DAY, title="t")

    assert chart.bars == [] and chart.description == "No spend to show."
