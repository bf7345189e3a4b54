"""``python bench/dispatch_worker.py -A orchestrator.tasks.app:celery_app worker ...``: the production Celery worker
with timing wrappers put around the dispatch path's own functions, for ``bench/dispatch.py`` alone.

Nothing in ``orchestrator`` is timed; this module wraps, before the pool forks, the names ``analyze_batch`` looks
up at call time (routing, claim, manifest, complete, the finalize enqueue) and the worker client's signing, HTTP
and parse steps. Each analyze task appends one JSON line (phases in seconds, wall-clock start and end) to
``$BENCH_DISPATCH_TIMINGS/<pid>.jsonl``, written after the task so that the write is not counted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TIMINGS_ENV = "BENCH_DISPATCH_TIMINGS"

# Phases, in the order a batch goes through them.
ROUTE = "route (read batch, choose backends)"
CLAIM = "claim (conditional UPDATE + commit)"
MANIFEST = "manifest (read assets)"
SIGN = "signed URLs"
SLOTS = "instance slot take/release (cloud)"
HTTP = "worker round trip (HTTP, JSON both ways)"
PARSE = "answer parse + trim"
UPSERT = "result upsert + indexing + commit"
INDEX = "  of which indexing"
COMPLETE = "completion (finalize enqueue)"
OTHER = "other (lease thread, sessions, task glue)"
PHASES = (ROUTE, CLAIM, MANIFEST, SIGN, SLOTS, HTTP, PARSE, UPSERT, INDEX, COMPLETE, OTHER)


class _Recorder(threading.local):
    """The current analyze task's phase times, per thread (the threads pool runs several tasks at once)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = defaultdict(float)
        self.active: list[str] = []
        self.block_label: list[str | None] = []
        self.items = 0
        self.start_wall = 0.0
        self.start = 0.0


REC = _Recorder()


def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its duration added to ``label``; a phase nested in another active phase counts only there."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if REC.block_label and REC.block_label[-1] is None:
            REC.block_label[-1] = label
        REC.active.append(label)
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            REC.active.pop()
            REC.phases[label] += time.perf_counter() - began

    return wrapper


def timed_scope(scope: Callable[[], contextlib.AbstractContextManager[Any]]) -> Callable[..., Any]:
    """``session_scope`` whose whole block (commit included) counts for the first phase called in it.

    A block opened inside an active phase (``build_manifest``'s own) is that phase's already. Blocks that call no
    timed function (the first read of the batch) count for routing, which reads in the same task step.
    """

    @contextlib.contextmanager
    def wrapper() -> Iterator[Any]:
        if REC.active:
            with scope() as session:
                yield session
            return
        REC.block_label.append(None)
        began = time.perf_counter()
        try:
            with scope() as session:
                yield session
        finally:
            label = REC.block_label.pop() or ROUTE
            elapsed = time.perf_counter() - began
            # The function's own time is inside the block: count the block once, under its label.
            REC.phases[label] += elapsed - REC.phases.pop(f"_inner:{label}", 0.0)

    return wrapper


def block_timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A function whose time counts through its enclosing session block (see :func:`timed_scope`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if REC.block_label and REC.block_label[-1] is None:
            REC.block_label[-1] = label
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - began
            REC.phases[label] += elapsed
            REC.phases[f"_inner:{label}"] += elapsed

    return wrapper


def install() -> None:
    """Put the wrappers in place and connect the task signals (call before the pool forks)."""
    from celery.signals import task_postrun, task_prerun

    import orchestrator.backends.cloud as cloud
    import orchestrator.batching as batching
    import orchestrator.tasks.jobs as jobs
    from orchestrator.backends.remote import WorkerClient
    from orchestrator.tasks.constants import TASK_ANALYZE_BATCH

    _patch(jobs, "session_scope", timed_scope)
    _patch(jobs, "backends_for_batch", lambda fn: block_timed(ROUTE, fn))
    _patch(jobs, "claim_batch", lambda fn: block_timed(CLAIM, fn))
    _patch(jobs, "complete_batch", lambda fn: block_timed(UPSERT, fn))
    _patch(batching, "index_assets", lambda fn: timed(INDEX, fn))

    def counting(build_manifest: Callable[..., Any]) -> Callable[..., Any]:
        def manifest_counted(batch_id: Any) -> Any:
            manifest, job_id = build_manifest(batch_id)
            REC.items = len(manifest.items)
            return manifest, job_id

        return timed(MANIFEST, manifest_counted)

    _patch(jobs, "build_manifest", counting)
    _patch(WorkerClient, "remote_manifest", lambda fn: timed(SIGN, fn))
    _patch(WorkerClient, "_post", lambda fn: timed(HTTP, fn))
    _patch(WorkerClient, "run", lambda fn: timed("_run", fn))
    _patch(cloud.CloudBackend, "execute", lambda fn: timed("_execute", fn))
    _patch(jobs.finalize_job_task, "delay", lambda fn: timed(COMPLETE, fn))

    folder = Path(os.environ[TIMINGS_ENV])

    def _began(task: Any = None, **_: Any) -> None:
        if getattr(task, "name", None) != TASK_ANALYZE_BATCH:
            return
        REC.phases = defaultdict(float)
        REC.items = 0
        REC.start_wall, REC.start = time.time(), time.perf_counter()

    def _ended(task: Any = None, args: Any = None, retval: Any = None, **_: Any) -> None:
        if getattr(task, "name", None) != TASK_ANALYZE_BATCH:
            return
        total = time.perf_counter() - REC.start
        phases = {k: v for k, v in REC.phases.items() if not k.startswith("_inner:")}
        run = phases.pop("_run", 0.0)
        execute = phases.pop("_execute", 0.0)
        if execute:
            phases[SLOTS] = max(0.0, execute - run)
        phases[PARSE] = max(0.0, run - phases.get(SIGN, 0.0) - phases.get(HTTP, 0.0))
        counted = sum(v for k, v in phases.items() if k != INDEX)
        phases[OTHER] = max(0.0, total - counted)
        row = {
            "batch_id": (args or [None])[0],
            "outcome": str(retval),
            "items": REC.items,
            "start": REC.start_wall,
            "end": REC.start_wall + total,
            "total": total,
            "phases": phases,
            "pid": os.getpid(),
            "thread": threading.get_ident(),
        }
        with (folder / f"{os.getpid()}.jsonl").open("a") as out:
            out.write(json.dumps(row) + "\n")

    task_prerun.connect(_began, weak=False)
    task_postrun.connect(_ended, weak=False)


def _patch(owner: Any, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace ``owner.name`` by ``wrap(owner.name)``: the benchmark's wrappers, by the names the code looks up."""
    setattr(owner, name, wrap(getattr(owner, name)))


if __name__ == "__main__":
    from celery.__main__ import main

    install()
    sys.argv = ["celery", *sys.argv[1:]]
    main()
