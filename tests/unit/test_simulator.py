"""The simulator replays a short bursty trace deterministically, and our policy beats the baselines there."""

from __future__ import annotations

from bench.sim.engine import simulate
from bench.sim.market import MarketModel, generate_offers
from bench.sim.scenarios import BASE_POLICY, run_all
from bench.sim.traces import bursty
from orchestrator.scheduler.policy import decide
from tests.fixtures.scheduler_factories import throughput

SEED = 1


def test_the_same_seed_replays_the_same_run() -> None:
    trace = bursty(SEED, hours=1.5)
    offers = generate_offers(SEED)

    def run() -> tuple[float, list[float], int]:
        result = simulate(
            trace,
            name="ours",
            policy_fn=decide,
            template=BASE_POLICY,
            offers=offers,
            throughput=throughput(),
            market=MarketModel(),
            seed=SEED,
            tick_s=10.0,
        )
        return result.cost_usd, result.completion_s, result.rentals

    first = run()
    assert first == run()
    cost, completion, rentals = first
    assert cost > 0.0 and rentals >= 1
    assert len(completion) == len(trace.jobs)


def test_on_a_short_bursty_trace_our_policy_is_near_the_bound_and_no_baseline_beats_it() -> None:
    report = run_all(bursty(SEED, hours=1.5), throughput=throughput(), seed=SEED, tick_s=10.0)
    assert report.ours.unfinished_jobs == 0
    assert report.bound_usd <= report.ours.cost_usd
    within, undominated = report.verdict()
    assert within, (report.ours.cost_usd, report.bound_usd)
    assert undominated
    always_on, per_job, no_idle = report.baselines
    assert report.ours.cost_usd < min(always_on.cost_usd, per_job.cost_usd, no_idle.cost_usd)
