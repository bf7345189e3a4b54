"""Server-drawn SVG bar charts: a series in, the geometry of bars, axis ticks and labels out (no JS library).

The template macro ``spend_chart`` in ``_spend_chart.html`` draws a :class:`BarChart`; every bar carries a
``<title>`` with its bucket and value, and the chart a ``<title>``/``<desc>`` summary for screen readers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from orchestrator.spend import Bucket, SpendPoint

WIDTH = 720
HEIGHT = 220
MARGIN_LEFT = 56
MARGIN_RIGHT = 24
MARGIN_TOP = 10
MARGIN_BOTTOM = 28
BAR_GAP_RATIO = 0.2
X_LABELS = 6
Y_TICKS = 4


@dataclass(frozen=True)
class Bar:
    """One bar: its rectangle in SVG units and what it shows."""

    x: float
    y: float
    width: float
    height: float
    value: float
    label: str


@dataclass(frozen=True)
class AxisLabel:
    """A label on an axis at a position in SVG units (``at`` is x for the time axis, y for the money axis)."""

    at: float
    text: str


@dataclass(frozen=True)
class BarChart:
    """Everything a template needs to draw the chart."""

    title: str
    description: str
    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    bars: list[Bar]
    y_ticks: list[AxisLabel]
    x_labels: list[AxisLabel]
    total: float
    peak: float


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least ``value`` (1 for nothing to show)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10.0 * power


def money(value: float) -> str:
    """A dollar amount as an axis or bar label: cents below $1000, whole dollars above."""
    return f"${value:,.0f}" if value >= 1000 else f"${value:,.2f}"


def _bucket_label(start: datetime, bucket: Bucket) -> tuple[str, str]:
    """(the bar's full label, the short axis label)."""
    if bucket is Bucket.HOUR:
        return start.strftime("%Y-%m-%d %H:00 UTC"), start.strftime("%H:00")
    return start.strftime("%Y-%m-%d (UTC)"), start.strftime("%b %d")


def bar_chart(points: Sequence[SpendPoint], *, bucket: Bucket, title: str) -> BarChart:
    """Bars for ``points`` (oldest first) scaled to a rounded maximum, with money ticks and a few time labels."""
    left, top = float(MARGIN_LEFT), float(MARGIN_TOP)
    right, bottom = float(WIDTH - MARGIN_RIGHT), float(HEIGHT - MARGIN_BOTTOM)
    peak = max((p.usd for p in points), default=0.0)
    scale_max = nice_ceiling(peak)
    plot_h = bottom - top
    slot = (right - left) / max(len(points), 1)
    bar_w = slot * (1 - BAR_GAP_RATIO)
    bars: list[Bar] = []
    x_labels: list[AxisLabel] = []
    every = max(1, math.ceil(len(points) / X_LABELS))
    for n, point in enumerate(points):
        height = plot_h * max(point.usd, 0.0) / scale_max
        x = left + n * slot + (slot - bar_w) / 2
        full, short = _bucket_label(point.start, bucket)
        bars.append(Bar(round(x, 2), round(bottom - height, 2), round(bar_w, 2), round(height, 2), point.usd, full))
        if (len(points) - 1 - n) % every == 0:
            x_labels.append(AxisLabel(round(x + bar_w / 2, 2), short))
    y_ticks = [
        AxisLabel(round(bottom - plot_h * k / Y_TICKS, 2), money(scale_max * k / Y_TICKS)) for k in range(Y_TICKS + 1)
    ]
    total = sum(p.usd for p in points)
    unit = "hour" if bucket is Bucket.HOUR else "day"
    if points:
        first, _ = _bucket_label(points[0].start, bucket)
        last, _ = _bucket_label(points[-1].start, bucket)
        description = (
            f"Spend per {unit} from {first} to {last}: {money(total)} in all, at most {money(peak)} in one {unit}."
        )
    else:
        description = "No spend to show."
    return BarChart(
        title=title,
        description=description,
        width=WIDTH,
        height=HEIGHT,
        left=left,
        top=top,
        right=right,
        bottom=bottom,
        bars=bars,
        y_ticks=y_ticks,
        x_labels=x_labels,
        total=total,
        peak=peak,
    )
