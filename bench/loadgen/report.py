"""The figures of a load run: requests, latency percentiles and errors per kind and overall, throughput, memory, and
the analysis check — as a dict (for ``--json``) and as printed lines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.loadgen.analysis import AnalysisCheck
from bench.loadgen.driver import LoadRun, Sample

MS = 1000.0


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process tree in MiB: after start-up, after the run (and the drain), and the peak."""

    before_mib: float
    after_mib: float
    peak_mib: float

    @property
    def growth_mib(self) -> float:
        """after - before."""
        return self.after_mib - self.before_mib


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method; 0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def kind_figures(samples: Sequence[Sample], wall_s: float) -> dict[str, Any]:
    """Count, outcomes, req/s and p50/p95/p99/max latency (ms) of some samples."""
    latencies = sorted(s.latency_s for s in samples)
    return {
        "requests": len(samples),
        "errors": sum(s.outcome == "error" for s in samples),
        "throttled": sum(s.outcome == "throttled" for s in samples),
        "unexpected": sum(s.outcome == "unexpected" for s in samples),
        "req_per_s": len(samples) / wall_s if wall_s > 0 else 0.0,
        "p50_ms": percentile(latencies, 50) * MS,
        "p95_ms": percentile(latencies, 95) * MS,
        "p99_ms": percentile(latencies, 99) * MS,
        "max_ms": (latencies[-1] if latencies else 0.0) * MS,
    }


def figures(
    run: LoadRun, analysis: AnalysisCheck, api: Memory, celery: Memory, setup: dict[str, Any]
) -> dict[str, Any]:
    """Every figure of the run, JSON-ready."""
    kinds = sorted({s.kind for s in run.samples})
    overall = kind_figures(run.samples, run.wall_s)
    problems = [f"{s.kind} {s.status} {s.detail}" for s in run.samples if s.outcome in ("error", "unexpected")]
    return {
        "setup": {**setup, "wall_s": run.wall_s, "config": asdict(run.config)},
        "overall": {**overall, "error_rate": overall["errors"] / overall["requests"] if overall["requests"] else 0.0},
        "by_kind": {k: kind_figures([s for s in run.samples if s.kind == k], run.wall_s) for k in kinds},
        "uploads": {
            "jobs": sum(len(t.jobs) for t in run.tenants),
            "files_accepted": len(run.asset_ids),
            "files_per_s": len(run.asset_ids) / run.wall_s if run.wall_s > 0 else 0.0,
        },
        "analysis": {**asdict(analysis), "all_analyzed_once": analysis.all_analyzed_once},
        "memory_mib": {
            "api": {**asdict(api), "growth_mib": api.growth_mib},
            "celery": {**asdict(celery), "growth_mib": celery.growth_mib},
        },
        "first_problems": problems[:10],
    }


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The figures as the lines the benchmark prints."""
    setup, overall, analysis = data["setup"], data["overall"], data["analysis"]
    lines = [
        f"{setup['tenants']} tenants x ({setup['config']['pollers_per_tenant']} pollers + 1 uploader), "
        f"{setup['api_workers']} API processes, Celery concurrency {setup['celery_concurrency']}, "
        f"{setup['cpus']} CPUs, stack up in {setup['startup_s']:.1f} s, load ran {setup['wall_s']:.1f} s",
        f"  {'kind':<14} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        f" {'5xx/conn':>8} {'429':>5} {'other':>5}",
    ]
    for kind, row in [*data["by_kind"].items(), ("ALL", overall)]:
        lines.append(
            f"  {kind:<14} {row['requests']:>8} {row['req_per_s']:>7.1f} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f}"
            f" {row['p99_ms']:>8.1f} {row['max_ms']:>8.1f} {row['errors']:>8} {row['throttled']:>5}"
            f" {row['unexpected']:>5}"
        )
    uploads = data["uploads"]
    lines.append(
        f"uploads: {uploads['jobs']} jobs, {uploads['files_accepted']} files accepted "
        f"({uploads['files_per_s']:.1f} files/s)"
    )
    lines.append(
        f"analysis: {analysis['done']}/{analysis['accepted']} done, {analysis['failed']} failed, "
        f"{analysis['lost']} lost, {analysis['unexpected']} unexpected, "
        f"{analysis['assets_without_one_result']} without exactly one result, "
        f"jobs {analysis['jobs_done']}/{analysis['jobs_sealed']} done, "
        f"{analysis['batches_claimed_more_than_once']}/{analysis['batches']} batches claimed twice, "
        f"drained {analysis['drain_s']:.1f} s after the load"
    )
    for name, mem in data["memory_mib"].items():
        lines.append(
            f"RSS {name}: {mem['before_mib']:.0f} MiB before, {mem['after_mib']:.0f} after "
            f"({mem['growth_mib']:+.0f}), peak {mem['peak_mib']:.0f}"
        )
    for problem in data["first_problems"]:
        lines.append(f"  problem: {problem}")
    verdict = (
        "PASS" if overall["errors"] == 0 and overall["unexpected"] == 0 and analysis["all_analyzed_once"] else "FAIL"
    )
    lines.append(
        f"summary: {verdict} {overall['requests']} requests, {overall['req_per_s']:.1f} req/s, "
        f"p95 {overall['p95_ms']:.0f} ms, p99 {overall['p99_ms']:.0f} ms, error rate {overall['error_rate']:.4f}, "
        f"{overall['throttled']} throttled, {analysis['done']}/{analysis['accepted']} analyzed once, "
        f"API RSS {data['memory_mib']['api']['growth_mib']:+.0f} MiB"
    )
    return lines
