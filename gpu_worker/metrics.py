"""The worker's Prometheus metrics, served at ``GET /metrics`` by ``gpu-worker serve`` behind the worker's token.

Counted as batches finish: items processed per analyzer, item errors per analyzer and code, batches per outcome,
and each request's batch time (queueing in the dynamic batcher included). Read at scrape time from the server's
state: readiness, the batcher's queue depth and run counters, warm-up and recent throughput, and GPU memory on
CUDA. Each app has its own registry, so several servers in one process (tests) never clash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpu_worker.contract import BatchResult

if TYPE_CHECKING:
    from gpu_worker.server import WorkerState

log = logging.getLogger(__name__)

READINESS_STATES = ("loading", "ready", "failed")
BATCH_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


def gpu_memory_bytes(device: str | None) -> tuple[int, int] | None:
    """Memory allocated by torch and the GPU's total memory, on CUDA; None elsewhere."""
    if device is None or not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    _, total = torch.cuda.mem_get_info(index)
    return int(torch.cuda.memory_allocated(index)), int(total)


class _StateCollector(Collector):
    """Figures read from the server's state at scrape time."""

    def __init__(self, state: WorkerState) -> None:
        self._state = state

    def describe(self) -> Iterable[Metric]:
        """Nothing, so registering does not read the state."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Readiness, queue, batcher counters, throughput and GPU memory."""
        status, device, warmup = self._state.status, self._state.device, dict(self._state.warmup)
        batching = self._state.batcher.snapshot()
        ready = GaugeMetricFamily("gpuw_readiness", "1 for the worker's current readiness state.", labels=["state"])
        for name in READINESS_STATES:
            ready.add_metric([name], 1.0 if str(status) == name else 0.0)
        yield ready
        yield GaugeMetricFamily(
            "gpuw_queue_depth_items", "Items waiting in the dynamic batcher.", value=batching["queue_depth"]["items"]
        )
        yield GaugeMetricFamily(
            "gpuw_queue_depth_requests",
            "Requests waiting in the dynamic batcher.",
            value=batching["queue_depth"]["requests"],
        )
        yield CounterMetricFamily("gpuw_batcher_runs", "Executor runs (merged or not).", value=batching["runs"])
        yield CounterMetricFamily(
            "gpuw_batcher_merged_runs", "Runs that merged several requests.", value=batching["merged_runs"]
        )
        if warmup.get("items_per_s") is not None:
            yield GaugeMetricFamily(
                "gpuw_warmup_items_per_second", "Items/s of the second warm-up run.", value=warmup["items_per_s"]
            )
        if batching.get("recent_items_per_s") is not None:
            yield GaugeMetricFamily(
                "gpuw_recent_items_per_second",
                "Items/s over the batcher's recent runs.",
                value=batching["recent_items_per_s"],
            )
        memory = gpu_memory_bytes(device)
        if memory is not None:
            yield GaugeMetricFamily("gpuw_gpu_memory_allocated_bytes", "GPU memory held by torch.", value=memory[0])
            yield GaugeMetricFamily("gpuw_gpu_memory_total_bytes", "The GPU's total memory.", value=memory[1])


class WorkerMetrics:
    """The registry of one worker server and the counters its ``/v1/analyze`` route feeds."""

    def __init__(self, state: WorkerState) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.items = Counter(
            "gpuw_items_processed", "Items an analyzer produced output for.", ["analyzer"], registry=self.registry
        )
        self.item_errors = Counter(
            "gpuw_item_errors",
            "Items an analyzer failed on, by error code.",
            ["analyzer", "code"],
            registry=self.registry,
        )
        self.unavailable = Counter(
            "gpuw_analyzer_unavailable",
            "Batches in which an analyzer could not run at all.",
            ["analyzer"],
            registry=self.registry,
        )
        self.batches = Counter("gpuw_batches", "Batches answered, by outcome.", ["outcome"], registry=self.registry)
        self.batch_seconds = Histogram(
            "gpuw_batch_seconds",
            "Time from accepting a batch to its result (batcher queueing included).",
            buckets=BATCH_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(state))

    def observe_result(self, result: BatchResult, seconds: float) -> None:
        """Count one finished batch's items, errors and time."""
        for item in result.items:
            for analyzer in item.outputs:
                self.items.labels(analyzer).inc()
            for analyzer, error in item.errors.items():
                self.item_errors.labels(analyzer, error.code).inc()
        for analyzer in result.unavailable:
            self.unavailable.labels(analyzer).inc()
        self.batches.labels("ok").inc()
        self.batch_seconds.observe(seconds)

    def batch_observer(self) -> Callable[[Future[BatchResult]], None]:
        """A done-callback for a submitted batch's future that records it when it finishes."""
        started = time.perf_counter()

        def done(future: Future[BatchResult]) -> None:
            seconds = time.perf_counter() - started
            if future.cancelled() or future.exception() is not None:
                self.batches.labels("failed").inc()
                self.batch_seconds.observe(seconds)
                return
            self.observe_result(future.result(), seconds)

        return done
