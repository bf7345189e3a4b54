"""Keeping the images/s table current: measured samples from our own workers replace the configured estimates."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from statistics import median
from typing import NamedTuple

from orchestrator.scheduler.model import ThroughputTable


class ThroughputSample(NamedTuple):
    """One measured full-pipeline images/s of a GPU model at ``measured_at``."""

    gpu_name: str
    images_per_s: float
    measured_at: datetime


def current_table(
    estimates: ThroughputTable,
    samples: Sequence[tuple[str, float, datetime]],
    *,
    now: datetime,
    max_age: timedelta,
) -> ThroughputTable:
    """``estimates`` with each GPU model's figure replaced by the median of its samples no older than ``max_age``.

    The median, not the mean, so one odd run (a throttled host, a worker sharing its GPU) does not move the figure.
    Samples that are not positive are ignored; GPU models without recent samples keep their estimate, and models
    seen only in samples are added. A reference GPU keeps a positive figure, so speeds stay defined.
    """
    recent: defaultdict[str, list[float]] = defaultdict(list)
    for gpu_name, images_per_s, measured_at in samples:
        if images_per_s > 0.0 and now - measured_at <= max_age:
            recent[gpu_name].append(images_per_s)
    if not recent:
        return estimates
    figures = dict(estimates.images_per_s)
    figures.update({gpu_name: median(values) for gpu_name, values in recent.items()})
    return ThroughputTable(
        images_per_s=figures, reference_gpu=estimates.reference_gpu, measured=estimates.measured | frozenset(recent)
    )
