"""One measured load run on a running stack: memory before, the load with the peak sampled, the drain, memory after,
the analysis check, and the figures."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from bench.loadgen.analysis import check_analysis, wait_for_analysis
from bench.loadgen.driver import LoadConfig, drive
from bench.loadgen.report import Memory, figures
from bench.loadgen.rss import PeakSampler, tree_rss_mib
from bench.loadgen.stack import Stack
from tests.fixtures.factories import TenantWithKey


def measure_load(
    stack: Stack,
    tenants: list[TenantWithKey],
    config: LoadConfig,
    *,
    drain_timeout_s: float,
    api_workers: int,
    celery_concurrency: int,
) -> dict[str, Any]:
    """Drive ``stack`` with ``tenants`` as ``config`` says, wait up to ``drain_timeout_s`` for the analysis to finish,
    and return every figure (see :func:`bench.loadgen.report.figures`)."""
    api_before, celery_before = tree_rss_mib(stack.api_pid), tree_rss_mib(stack.celery_pid)
    with PeakSampler(stack.api_pid) as api_peak, PeakSampler(stack.celery_pid) as celery_peak:
        run = asyncio.run(drive(stack.url, tenants, config))
        drain_s = wait_for_analysis(run, drain_timeout_s)
    api = Memory(before_mib=api_before, after_mib=tree_rss_mib(stack.api_pid), peak_mib=api_peak.peak_mib)
    celery = Memory(before_mib=celery_before, after_mib=tree_rss_mib(stack.celery_pid), peak_mib=celery_peak.peak_mib)
    setup = {
        "tenants": len(tenants),
        "api_workers": api_workers,
        "celery_concurrency": celery_concurrency,
        "cpus": os.cpu_count(),
        "database": "postgresql",
        "broker": "redis",
        "startup_s": stack.startup_s,
    }
    return figures(run, check_analysis(run, drain_s), api, celery, setup)
