"""Our policy and the baselines as configurations of the same ``decide()``, run on one trace and market."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.sim.engine import SimResult, clairvoyant_bound_usd, simulate
from bench.sim.market import MarketModel, generate_offers
from bench.sim.traces import Trace
from orchestrator.scheduler.model import OfferFilters, TenantPolicy, ThroughputTable, Tier
from orchestrator.scheduler.policy import decide

# The tenant settings every run shares; budgets are generous so that the comparison is about scheduling.
BASE_POLICY = TenantPolicy(
    tenant="",
    min_instances=0,
    max_instances=8,
    scale_up_threshold_gpu_s=900.0,
    max_overhead_ratio=0.25,
    scale_up_wait_s=60.0,
    idle_timeout_s=120.0,
    max_price_per_h_usd=1.0,
    daily_cap_usd=1000.0,
    monthly_cap_usd=10_000.0,
    soft_cap_usd=9_000.0,
    tiers=(Tier.CLOUD,),
    max_gpu_wait_s=3600.0,
    min_runtime_s=600.0,
    boot_deadline_s=900.0,
    # Any GPU model the throughput table knows; the other filters are the product defaults.
    filters=OfferFilters(gpu_names=()),
)


@dataclass(frozen=True)
class Report:
    """Every policy's result on one trace, and the clairvoyant bound."""

    trace: Trace
    bound_usd: float
    ours: SimResult
    baselines: tuple[SimResult, ...]

    def verdict(self) -> tuple[bool, bool]:
        """(our cost is within 1.3x of the bound, no baseline is cheaper than us at an equal or better p95).

        "Closer to the bound" is strictly cheaper: a baseline that makes exactly our decisions (no idle timeout on a
        trace where nothing idles) ties and does not beat us.
        """
        ours_p95 = self.ours.percentile_s(0.95)
        within = self.ours.cost_usd <= 1.3 * self.bound_usd
        dominated = any(
            b.cost_usd < self.ours.cost_usd and b.percentile_s(0.95) <= ours_p95 and b.unfinished_jobs == 0
            for b in self.baselines
        )
        return within, not dominated


def run_all(
    trace: Trace, *, throughput: ThroughputTable, seed: int, market: MarketModel | None = None, tick_s: float = 5.0
) -> Report:
    """Our policy, the three baselines, and the bound on ``trace``."""
    market = market or MarketModel()
    offers = generate_offers(seed)

    def run(name: str, template: TenantPolicy, *, per_job: bool = False, keep_idle: bool = False) -> SimResult:
        return simulate(
            trace,
            name=name,
            policy_fn=decide,
            template=template,
            offers=offers,
            throughput=throughput,
            market=market,
            seed=seed,
            per_job=per_job,
            keep_idle=keep_idle,
            tick_s=tick_s,
        )

    ours = run("ours", BASE_POLICY)
    baselines = (
        run("always-on (1 instance)", replace(BASE_POLICY, min_instances=1, max_instances=1)),
        run(
            "instance per job",
            replace(
                BASE_POLICY, max_instances=1, scale_up_threshold_gpu_s=0.0, scale_up_wait_s=0.0, idle_timeout_s=0.0
            ),
            per_job=True,
        ),
        run("no idle timeout", BASE_POLICY, keep_idle=True),
    )
    bound = clairvoyant_bound_usd(
        trace, template=BASE_POLICY, offers=offers, throughput=throughput, boot_s=market.boot_median_s
    )
    return Report(trace=trace, bound_usd=bound, ours=ours, baselines=baselines)
