"""Scheduler cost: our policy against baselines and the clairvoyant lower bound on simulated workload traces.

    python bench/scheduler_cost.py                      # bursty, steady and many-tenant traces, seed 1
    python bench/scheduler_cost.py --trace bursty --seeds 1 2 3 --hours 8

Every policy is the same ``orchestrator.scheduler.decide()``: ours with the default tenant settings, "always-on"
with min = max = 1 instance, "instance per job" with one pseudo-tenant per job, at most one instance each and no
idle time, and "no idle timeout". The bound is all GPU work at the best price per image among acceptable offers
plus one boot. It prints total cost, the ratio to the bound, and p50/p95 job completion time; nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.sim.engine import SimResult  # noqa: E402
from bench.sim.scenarios import Report, run_all  # noqa: E402
from bench.sim.traces import TRACES  # noqa: E402
from orchestrator.scheduler.offers import load_throughput_table  # noqa: E402


def _row(result: SimResult, bound_usd: float) -> str:
    return (
        f"  {result.policy:<24} ${result.cost_usd:>9.2f}  {result.cost_usd / bound_usd:>6.3f}x"
        f"  p50 {result.percentile_s(0.5) / 60:>7.1f} min  p95 {result.percentile_s(0.95) / 60:>7.1f} min"
        f"  rentals {result.rentals:>3}  peak {result.peak_instances:>2}  GPU-h {result.instance_hours:>6.2f}"
        f"  boot-fail {result.boot_failures}  deaths {result.deaths}  gone {result.offers_gone}"
        f"  unfinished {result.unfinished_jobs}"
    )


def print_report(report: Report, seed: int, elapsed_s: float) -> None:
    """One table per trace and seed, and the verdict against the issue's target."""
    trace = report.trace
    images = sum(j.images for j in trace.jobs)
    print(
        f"trace {trace.name} seed {seed}: {len(trace.jobs)} jobs, {images:,} images, "
        f"{trace.duration_s / 3600:.1f} h (simulated in {elapsed_s:.1f} s)"
    )
    print(f"  {'clairvoyant bound':<24} ${report.bound_usd:>9.2f}  {1.0:>6.3f}x")
    for result in (report.ours, *report.baselines):
        print(_row(result, report.bound_usd))
    within, undominated = report.verdict()
    print(f"  ours within 1.3x of the bound: {within}; no baseline as cheap at an equal or better p95: {undominated}")
    print()


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run every trace and seed, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", choices=[*TRACES, "all"], default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--tick-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    throughput = load_throughput_table(REPO / "config" / "gpu_throughput.toml")
    names = list(TRACES) if args.trace == "all" else [args.trace]
    for name in names:
        for seed in args.seeds:
            started = time.perf_counter()
            report = run_all(TRACES[name](seed, hours=args.hours), throughput=throughput, seed=seed, tick_s=args.tick_s)
            print_report(report, seed, time.perf_counter() - started)


if __name__ == "__main__":
    main()
