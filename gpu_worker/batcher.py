"""Dynamic batching: concurrent requests merged into shared executor runs by the one thread that owns the models.

Requests that ask for the same analyzers with the same options are merged into one manifest of at most
``max_batch_items`` items; the first request of a run waits at most ``max_wait_s`` for others to join, and requests
that queued while a run was busy join the next run at once. Item ids are re-keyed inside a merged run, so two
requests may use the same ids; each request gets exactly its own items back, in its own order. When a merged run
raises, every request in it runs again alone, so that a failing request never fails another.

Work reaches the models only through this thread (``submit`` for batches, ``call`` for loading and warm-up), so no
inference ever runs on an event loop and the models never see two batches at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gpu_worker.contract import BatchManifest, BatchResult, ItemError, ItemResult
from gpu_worker.errors import WorkerError

log = logging.getLogger(__name__)

T = TypeVar("T")
RunBatch = Callable[[BatchManifest], BatchResult]
# Throughput in /v1/info is measured over this many of the most recent runs.
RECENT_RUNS = 20


class BatcherBusyError(WorkerError):
    """The queue holds too many items already; the caller should retry later or elsewhere."""

    code = "worker_busy"


class BatcherStoppedError(WorkerError):
    """The batcher is shutting down and takes no more work."""

    code = "worker_stopping"


@dataclass
class _Request:
    manifest: BatchManifest
    key: str
    future: Future[BatchResult]
    enqueued_s: float


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]


@dataclass
class BatcherCounters:
    """What the batcher has done since it started, for ``/v1/info``."""

    requests: int = 0
    runs: int = 0
    merged_runs: int = 0
    items: int = 0
    isolated_reruns: int = 0
    recent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=RECENT_RUNS))

    def snapshot(self) -> dict[str, Any]:
        """Plain numbers, with the items/s of the recent runs (None before the first run)."""
        items = sum(n for n, _ in self.recent)
        seconds = sum(s for _, s in self.recent)
        return {
            "requests": self.requests,
            "runs": self.runs,
            "merged_runs": self.merged_runs,
            "items": self.items,
            "isolated_reruns": self.isolated_reruns,
            "recent_runs": len(self.recent),
            "recent_items_per_s": round(items / seconds, 3) if seconds > 0 else None,
        }


def merge_key(manifest: BatchManifest) -> str:
    """Requests with equal keys can share a run: the same analyzers in the same order, and equal options."""
    return json.dumps([manifest.analyzers, manifest.options], sort_keys=True, separators=(",", ":"), default=str)


class DynamicBatcher:
    """Queues manifests from any thread and runs them, merged, on one executor thread."""

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch_items: int = 64,
        max_wait_s: float = 0.005,
        max_queue_items: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_items < 1:
            raise ValueError("max_batch_items must be at least 1")
        self._run = run
        self.max_batch_items = max_batch_items
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_queue_items = max_queue_items
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._calls: deque[_Call] = deque()
        self._queued_items = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.counters = BatcherCounters()

    def start(self) -> None:
        """Start the executor thread (once)."""
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="gpuw-executor", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the queued work, then end the thread; later submissions raise ``BatcherStoppedError``."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def submit(self, manifest: BatchManifest) -> Future[BatchResult]:
        """Queue a manifest; the future resolves to its own BatchResult (or the exception its run raised)."""
        future: Future[BatchResult] = Future()
        with self._cond:
            if self._stopping:
                raise BatcherStoppedError("the worker is shutting down")
            # An empty queue always accepts, so one request larger than the limit can still run.
            if self._queued_items and self._queued_items + len(manifest.items) > self.max_queue_items:
                raise BatcherBusyError(
                    f"{self._queued_items} items are queued already (limit {self.max_queue_items}); retry later"
                )
            self._pending.append(_Request(manifest, merge_key(manifest), future, self._clock()))
            self._queued_items += len(manifest.items)
            self.counters.requests += 1
            self._cond.notify_all()
        return future

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the executor thread before any batch queued after it (loading models, warm-up)."""
        future: Future[T] = Future()
        with self._cond:
            if self._stopping:
                raise BatcherStoppedError("the worker is shutting down")
            self._calls.append(_Call(fn, future))
            self._cond.notify_all()
        return future

    def queue_depth(self) -> dict[str, int]:
        """Requests and items waiting for a run."""
        with self._cond:
            return {"requests": len(self._pending), "items": self._queued_items}

    def snapshot(self) -> dict[str, Any]:
        """Counters, queue depth and limits, for ``/v1/info``."""
        with self._cond:
            counters = self.counters.snapshot()
            depth = {"requests": len(self._pending), "items": self._queued_items}
        return {
            **counters,
            "queue_depth": depth,
            "max_batch_items": self.max_batch_items,
            "max_wait_ms": round(self.max_wait_s * 1000, 3),
        }

    def _loop(self) -> None:
        while True:
            work = self._next_work()
            if work is None:
                return
            if isinstance(work, _Call):
                self._do_call(work)
            else:
                self._execute(work)

    def _next_work(self) -> _Call | list[_Request] | None:
        with self._cond:
            while True:
                if self._calls:
                    return self._calls.popleft()
                if self._pending:
                    group = self._collect()
                    if group is not None:
                        return group
                    continue
                if self._stopping:
                    return None
                self._cond.wait()

    def _collect(self) -> list[_Request] | None:
        """Under the lock: the next group to run, or None after waiting (the queue may have changed meanwhile)."""
        first = self._pending[0]
        group = [first]
        total = len(first.manifest.items)
        for request in self._pending[1:]:
            if request.key == first.key and total + len(request.manifest.items) <= self.max_batch_items:
                group.append(request)
                total += len(request.manifest.items)
        remaining_s = first.enqueued_s + self.max_wait_s - self._clock()
        if total < self.max_batch_items and remaining_s > 0 and not self._stopping and not self._calls:
            self._cond.wait(remaining_s)
            return None
        for request in group:
            self._pending.remove(request)
            self._queued_items -= len(request.manifest.items)
        # A request whose caller went away is dropped; the others are marked running and can no longer be cancelled.
        return [r for r in group if r.future.set_running_or_notify_cancel()]

    @staticmethod
    def _do_call(call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn())
        except Exception as exc:  # handed to the caller, whose future re-raises it
            call.future.set_exception(exc)

    def _execute(self, group: list[_Request]) -> None:
        if not group:
            return
        if len(group) == 1:
            self._run_alone(group[0])
            return
        merged, origin = _merge(group)
        started = self._clock()
        try:
            result = self._run(merged)
        except Exception as exc:  # isolate: each request runs again alone and only a failing one fails
            log.warning("a merged run of %d requests failed (%s); running them one by one", len(group), exc)
            with self._cond:
                self.counters.isolated_reruns += 1
            for request in group:
                self._run_alone(request)
            return
        self._record(len(merged.items), self._clock() - started, merged=True)
        parts = _split(result, group, origin)
        for request, part in zip(group, parts, strict=True):
            request.future.set_result(part)

    def _run_alone(self, request: _Request) -> None:
        started = self._clock()
        try:
            result = self._run(request.manifest)
        except Exception as exc:  # the caller's future re-raises it; the thread serves the next request
            log.warning("batch %s failed: %s", request.manifest.batch_id, exc)
            request.future.set_exception(exc)
            return
        self._record(len(request.manifest.items), self._clock() - started, merged=False)
        request.future.set_result(result)

    def _record(self, items: int, seconds: float, *, merged: bool) -> None:
        with self._cond:
            self.counters.runs += 1
            self.counters.merged_runs += int(merged)
            self.counters.items += items
            self.counters.recent.append((items, seconds))


def _merge(group: list[_Request]) -> tuple[BatchManifest, dict[str, tuple[int, int]]]:
    """One manifest holding every item of the group under fresh ids; the map leads back to (request, position)."""
    items = []
    origin: dict[str, tuple[int, int]] = {}
    for r_index, request in enumerate(group):
        for i_index, item in enumerate(request.manifest.items):
            key = f"{r_index}:{i_index}"
            origin[key] = (r_index, i_index)
            items.append(item.model_copy(update={"asset_id": key}))
    first = group[0].manifest
    merged = BatchManifest(
        batch_id=f"merged-{uuid.uuid4().hex[:12]}", analyzers=first.analyzers, options=first.options, items=items
    )
    return merged, origin


def _split(result: BatchResult, group: list[_Request], origin: dict[str, tuple[int, int]]) -> list[BatchResult]:
    """Each request's own BatchResult, its items under their original ids and in their original order."""
    slots: list[list[ItemResult | None]] = [[None] * len(r.manifest.items) for r in group]
    for item in result.items:
        where = origin.get(item.asset_id)
        if where is not None:
            r_index, i_index = where
            original = group[r_index].manifest.items[i_index].asset_id
            slots[r_index][i_index] = item.model_copy(update={"asset_id": original})
    parts = []
    for request, found in zip(group, slots, strict=True):
        items = [
            slot if slot is not None else _missing(item.asset_id, request.manifest.analyzers)
            for slot, item in zip(found, request.manifest.items, strict=True)
        ]
        parts.append(
            BatchResult(
                batch_id=request.manifest.batch_id,
                items=items,
                unavailable=dict(result.unavailable),
                device=result.device,
                elapsed_s=result.elapsed_s,
            )
        )
    return parts


def _missing(asset_id: str, analyzers: list[str]) -> ItemResult:
    error = ItemError(code="missing_result", message="the executor returned no result for this item")
    return ItemResult(asset_id=asset_id, errors=dict.fromkeys(analyzers, error))
