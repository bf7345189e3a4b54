"""A Prometheus collector that turns the database's figures (:mod:`.ops_snapshot`) into metrics at scrape time.

Correct with any number of API and Celery processes, because it counts rows instead of keeping counters in one
process. A snapshot is reused for :data:`CACHE_TTL_S`, and concurrent scrapes share one read, so scrapes cannot
hammer the database. When the database cannot be read, only ``orch_database_up 0`` is exported.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.observability.ops_snapshot import LeakReason, OpsSnapshot, TenantFigures

log = logging.getLogger(__name__)

CACHE_TTL_S = 5.0


def used_ratio(spent_usd: float, cap_usd: float) -> float:
    """Spend over cap, not clamped (1.0 is the cap; above it the cap was crossed); a zero cap counts as full once
    anything is spent, as the budget view shows it."""
    if cap_usd <= 0:
        return 1.0 if spent_usd > 0 else 0.0
    return spent_usd / cap_usd


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


def _tenant_families(tenants: list[TenantFigures]) -> Iterator[Metric]:
    queue_batches = _gauge(
        "orch_queue_batches", "Batches waiting (pending) or running, per tenant.", ["tenant", "status"]
    )
    queue_items = _gauge("orch_queue_items", "Items in pending or running batches, per tenant.", ["tenant", "status"])
    oldest = _gauge(
        "orch_queue_oldest_pending_age_seconds", "Age of the tenant's oldest pending batch (0: none).", ["tenant"]
    )
    spend = _gauge("orch_tenant_spend_usd", "Charged so far today / this month (UTC).", ["tenant", "period"])
    caps = _gauge("orch_tenant_budget_cap_usd", "The tenant's daily, monthly and soft caps.", ["tenant", "period"])
    ratio = _gauge(
        "orch_tenant_budget_used_ratio",
        "Spend over cap (soft: month plus reservations); 1 is the cap, not clamped.",
        ["tenant", "period"],
    )
    configured = _gauge("orch_tenant_budget_configured", "1 when the tenant has a budget set.", ["tenant"])
    reserved = _gauge("orch_tenant_reserved_usd", "Money reserved for live instances, not yet charged.", ["tenant"])
    rate = _gauge(
        "orch_tenant_spend_rate_usd_per_hour", "Summed $/h of the tenant's instances that may be billing.", ["tenant"]
    )
    paused = _gauge("orch_tenant_paused", "1 while the scheduler pauses the tenant's cloud work.", ["tenant"])
    leaks = _gauge(
        "orch_instances_leak_suspect",
        "Instances the scheduler should already have destroyed: idle past the idle timeout, or booting past the "
        "boot deadline (plus 5 min).",
        ["tenant", "reason"],
    )
    for t in tenants:
        for status in ("pending", "running"):
            queue_batches.add_metric([t.name, status], t.queued_batches.get(status, 0))
            queue_items.add_metric([t.name, status], t.queued_items.get(status, 0))
        oldest.add_metric([t.name], t.oldest_pending_age_s or 0.0)
        spend.add_metric([t.name, "day"], t.spend_day_usd)
        spend.add_metric([t.name, "month"], t.spend_month_usd)
        for period, cap, spent in (
            ("day", t.cap_day_usd, t.spend_day_usd),
            ("month", t.cap_month_usd, t.spend_month_usd),
            ("soft", t.soft_cap_usd, t.spend_month_usd + t.reserved_usd),
        ):
            caps.add_metric([t.name, period], cap)
            ratio.add_metric([t.name, period], used_ratio(spent, cap))
        configured.add_metric([t.name], 1.0 if t.budget_configured else 0.0)
        reserved.add_metric([t.name], t.reserved_usd)
        rate.add_metric([t.name], t.spend_rate_usd_per_h)
        paused.add_metric([t.name], 1.0 if t.paused else 0.0)
        for reason in LeakReason:
            leaks.add_metric([t.name, reason.value], t.leak_suspects.get(reason, 0))
    yield from (queue_batches, queue_items, oldest, spend, caps, ratio, configured, reserved, rate, paused, leaks)


def snapshot_families(snapshot: OpsSnapshot) -> Iterator[Metric]:
    """The metric families of one snapshot (pure)."""
    yield GaugeMetricFamily("orch_database_up", "1 when the metrics could read the database.", value=1.0)
    yield from _tenant_families(snapshot.tenants)
    instances = _gauge("orch_instances", "Rented-instance rows by state (live and final).", ["state"])
    for state, count in sorted(snapshot.instances_by_state.items()):
        instances.add_metric([state], count)
    yield instances
    yield GaugeMetricFamily(
        "orch_instances_destroy_failing",
        "Live instances whose destroy failed at least once (they may still bill).",
        value=snapshot.destroy_failing,
    )
    finished = CounterMetricFamily(
        "orch_batches_finished",
        "Finished batches per backend and outcome, counted from the database (deleting a job lowers it, which "
        "Prometheus reads as a counter reset).",
        labels=["backend", "status"],
    )
    for (backend, status), count in sorted(snapshot.batches_finished.items()):
        finished.add_metric([backend, status], count)
    yield finished
    latency = _gauge(
        "orch_batch_run_recent_seconds",
        "Quantiles of started-to-finished time of batches done within the last hour, per backend.",
        ["backend", "quantile"],
    )
    recent = _gauge("orch_batches_done_recent", "Batches done within the last hour, per backend.", ["backend"])
    for backend, figures in sorted(snapshot.latency.items()):
        recent.add_metric([backend], figures.count)
        for q, seconds in figures.quantiles.items():
            if not math.isnan(seconds):
                latency.add_metric([backend, str(q)], seconds)
    yield from (latency, recent)
    images = _gauge(
        "orch_worker_images_per_second", "Newest measured images/s of each live instance.", ["instance", "gpu"]
    )
    age = _gauge("orch_worker_throughput_age_seconds", "Age of that measurement.", ["instance", "gpu"])
    for figure in snapshot.throughput:
        images.add_metric([figure.instance_id, figure.gpu_name], figure.images_per_s)
        age.add_metric([figure.instance_id, figure.gpu_name], figure.age_s)
    yield from (images, age)


class DatabaseCollector(Collector):
    """Reads a snapshot with ``read`` at most once per ``ttl_s`` and exports it."""

    def __init__(
        self,
        read: Callable[[], OpsSnapshot],
        *,
        ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, OpsSnapshot, float] | None = None

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering must not query the database (the registry calls ``collect`` otherwise)."""
        return []

    def _snapshot(self) -> tuple[OpsSnapshot, float]:
        with self._lock:  # concurrent scrapes wait for one read instead of each running the queries
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= self._ttl_s:
                started = time.perf_counter()
                snapshot = self._read()
                self._cached = (now, snapshot, time.perf_counter() - started)
            return self._cached[1], self._cached[2]

    def collect(self) -> Iterable[Metric]:
        """The snapshot's families, or ``orch_database_up 0`` when the database cannot be read."""
        try:
            snapshot, read_s = self._snapshot()
        except SQLAlchemyError as exc:
            log.warning("metrics could not read the database: %s", type(exc).__name__)
            yield GaugeMetricFamily("orch_database_up", "1 when the metrics could read the database.", value=0.0)
            return
        yield from snapshot_families(snapshot)
        yield GaugeMetricFamily("orch_metrics_read_seconds", "How long the last database read took.", value=read_s)
