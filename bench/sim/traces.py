"""Workload traces for the scheduler simulator, generated from a seed: bursty, steady, and many tenants.

Work is counted in images of the full image pipeline; the simulator converts it with the throughput table.
The parameters below describe the workloads the product is for (archives arriving in bursts of large jobs); they
were fixed before the policy was tuned and are not tuned to it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

HOUR_S = 3600.0


@dataclass(frozen=True)
class Job:
    """One job: who submits it, when (seconds from the trace start), and how many images it holds."""

    job_id: str
    tenant: str
    arrival_s: float
    images: int


@dataclass(frozen=True)
class Trace:
    """A named list of jobs in arrival order, and how long the trace lasts."""

    name: str
    jobs: tuple[Job, ...]
    duration_s: float


def _job_images(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return int(min(max(rng.lognormvariate(0.0, sigma) * median, low), high))


def bursty(seed: int, *, hours: float = 8.0, tenant: str = "studio") -> Trace:
    """Bursts (mean gap 50 min) of 1-5 large jobs (median 150k images) submitted within 10 minutes."""
    rng = random.Random(f"bursty-{seed}")
    jobs: list[Job] = []
    t = rng.uniform(0.0, 600.0)
    while t < hours * HOUR_S:
        for _ in range(rng.randint(1, 5)):
            arrival = t + rng.uniform(0.0, 600.0)
            images = _job_images(rng, 150_000, 0.8, 10_000, 1_000_000)
            jobs.append(Job(f"j{len(jobs)}", tenant, arrival, images))
        t += rng.expovariate(1.0 / (50 * 60.0))
    return Trace("bursty", tuple(sorted(jobs, key=lambda j: j.arrival_s)), hours * HOUR_S)


def steady(seed: int, *, hours: float = 8.0, tenant: str = "archive") -> Trace:
    """A job every 6 minutes on average (Poisson), median 20k images."""
    rng = random.Random(f"steady-{seed}")
    jobs: list[Job] = []
    t = rng.expovariate(1.0 / 360.0)
    while t < hours * HOUR_S:
        jobs.append(Job(f"j{len(jobs)}", tenant, t, _job_images(rng, 20_000, 0.6, 1_000, 200_000)))
        t += rng.expovariate(1.0 / 360.0)
    return Trace("steady", tuple(jobs), hours * HOUR_S)


def many_tenants(seed: int, *, hours: float = 8.0, tenants: int = 8) -> Trace:
    """Eight tenants, each with bursts every 2 hours on average of 1-3 jobs (median 60k images)."""
    rng = random.Random(f"many-{seed}")
    jobs: list[Job] = []
    for index in range(tenants):
        tenant = f"tenant{index}"
        t = rng.uniform(0.0, 3600.0)
        while t < hours * HOUR_S:
            for _ in range(rng.randint(1, 3)):
                images = _job_images(rng, 60_000, 0.8, 5_000, 500_000)
                jobs.append(Job(f"{tenant}-j{len(jobs)}", tenant, t + rng.uniform(0.0, 300.0), images))
            t += rng.expovariate(1.0 / (2 * HOUR_S))
    return Trace("many_tenants", tuple(sorted(jobs, key=lambda j: j.arrival_s)), hours * HOUR_S)


TRACES: dict[str, Callable[..., Trace]] = {"bursty": bursty, "steady": steady, "many_tenants": many_tenants}
