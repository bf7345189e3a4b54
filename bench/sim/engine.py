"""The simulator: replays a trace on a simulated market and clock, driving a policy function tick by tick.

Work is fluid within a tick: the ready instances of a tenant drain its jobs first-come first-served at their speed
(reference-GPU seconds per second). Money goes through the same in-memory Ledger the tests check: a reservation
before each rental, accrual every tick from creation (boot time is billed), settlement on destroy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from bench.sim.market import InstanceFate, MarketModel, draw_fate
from bench.sim.traces import Job, Trace
from orchestrator.scheduler.ledger import Ledger, ReservationRefusedError
from orchestrator.scheduler.model import (
    Action,
    Destroy,
    DestroyReason,
    Fallback,
    InstanceState,
    InstanceView,
    OfferView,
    PendingWork,
    Rent,
    Snapshot,
    TenantPolicy,
    ThroughputTable,
    Warn,
)
from orchestrator.scheduler.offers import rank_offers

PolicyFn = Callable[[Snapshot], list[Action]]
EPOCH = datetime(2026, 1, 5, tzinfo=UTC)
BATCH_IMAGES = 256
OFFER_GONE_FOR_S = 3600.0
# A run that cannot finish (no capacity at all) stops this long after the trace ends.
GIVE_UP_AFTER_S = 48 * 3600.0


@dataclass
class _JobState:
    job: Job
    remaining_gpu_s: float
    done_s: float | None = None


@dataclass
class _Instance:
    instance_id: str
    key: str
    offer: OfferView
    created_s: float
    fate: InstanceFate
    state: InstanceState = InstanceState.LOADING
    ready_s: float | None = None
    last_busy_s: float | None = None
    busy: bool = False


@dataclass
class SimResult:
    """What one policy did on one trace."""

    policy: str
    cost_usd: float
    completion_s: list[float]
    unfinished_jobs: int
    rentals: int
    boot_failures: int
    deaths: int
    offers_gone: int
    refused_reservations: int
    peak_instances: int
    warnings: int
    fallbacks: int
    instance_hours: float = 0.0

    def percentile_s(self, fraction: float) -> float:
        """Job completion time (arrival to last image done) at ``fraction`` (nearest rank)."""
        if not self.completion_s:
            return float("nan")
        ordered = sorted(self.completion_s)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@dataclass
class _World:
    trace: Trace
    policy_fn: PolicyFn
    template: TenantPolicy
    per_job: bool
    keep_idle: bool
    seed: int
    market: MarketModel
    throughput: ThroughputTable
    tick_s: float
    offers: dict[int, OfferView]
    ledger: Ledger = field(default_factory=Ledger)
    queues: dict[str, list[_JobState]] = field(default_factory=dict)
    all_jobs: list[_JobState] = field(default_factory=list)
    instances: dict[str, _Instance] = field(default_factory=dict)
    excluded: set[int] = field(default_factory=set)
    offers_back_at: list[tuple[float, OfferView]] = field(default_factory=list)
    rentals: int = 0
    boot_failures: int = 0
    deaths: int = 0
    offers_gone: int = 0
    refused: int = 0
    peak: int = 0
    warnings: int = 0
    fallbacks: int = 0
    instance_s: float = 0.0

    def key(self, job: Job) -> str:
        return job.job_id if self.per_job else job.tenant

    def policy_for(self, key: str) -> TenantPolicy:
        return replace(self.template, tenant=key)

    @property
    def reference_speed_images_per_s(self) -> float:
        return self.throughput.images_per_s[self.throughput.reference_gpu]

    @property
    def batch_gpu_s(self) -> float:
        return BATCH_IMAGES / self.reference_speed_images_per_s


def simulate(
    trace: Trace,
    *,
    name: str,
    policy_fn: PolicyFn,
    template: TenantPolicy,
    offers: list[OfferView],
    throughput: ThroughputTable,
    market: MarketModel,
    seed: int,
    per_job: bool = False,
    keep_idle: bool = False,
    tick_s: float = 5.0,
) -> SimResult:
    """Replay ``trace`` under ``policy_fn``.

    ``per_job`` gives every job its own pseudo-tenant (one instance each); ``keep_idle`` ignores the policy's idle
    destroys (the "no idle timeout" baseline: the same decisions otherwise).
    """
    world = _World(
        trace=trace,
        policy_fn=policy_fn,
        template=template,
        per_job=per_job,
        keep_idle=keep_idle,
        seed=seed,
        market=market,
        throughput=throughput,
        tick_s=tick_s,
        offers={o.offer_id: o for o in offers},
    )
    arrivals = list(trace.jobs)
    next_arrival = 0
    t = 0.0
    while True:
        _advance(world, t - tick_s, t)
        while next_arrival < len(arrivals) and arrivals[next_arrival].arrival_s <= t:
            job = arrivals[next_arrival]
            state = _JobState(job, job.images / world.reference_speed_images_per_s)
            world.queues.setdefault(world.key(job), []).append(state)
            world.all_jobs.append(state)
            next_arrival += 1
        now = EPOCH + timedelta(seconds=t)
        world.ledger.accrue(now)
        finished = next_arrival == len(arrivals) and not any(world.queues.values())
        if (finished and t >= trace.duration_s) or t > trace.duration_s + GIVE_UP_AFTER_S:
            for inst in list(world.instances.values()):
                _destroy(world, inst, now, exclude=False)
            break
        _apply(world, world.policy_fn(_snapshot(world, t, arrivals)), t)
        world.peak = max(world.peak, len(world.instances))
        t += tick_s
    completion = [s.done_s - s.job.arrival_s for s in world.all_jobs if s.done_s is not None]
    return SimResult(
        policy=name,
        cost_usd=world.ledger.total_spent_usd(),
        completion_s=completion,
        unfinished_jobs=len(trace.jobs) - len(completion),
        rentals=world.rentals,
        boot_failures=world.boot_failures,
        deaths=world.deaths,
        offers_gone=world.offers_gone,
        refused_reservations=world.refused,
        peak_instances=world.peak,
        warnings=world.warnings,
        fallbacks=world.fallbacks,
        instance_hours=world.instance_s / 3600.0,
    )


def _advance(world: _World, start_s: float, end_s: float) -> None:
    """Boots, deaths and work during (start_s, end_s]."""
    for inst in world.instances.values():
        world.instance_s += end_s - max(start_s, inst.created_s)
        if inst.state == InstanceState.LOADING and not inst.fate.stuck:
            boot_done = inst.created_s + inst.fate.boot_s
            if boot_done <= end_s:
                if inst.fate.exits_at_boot:
                    inst.state = InstanceState.EXITED
                    world.boot_failures += 1
                else:
                    inst.state, inst.ready_s = InstanceState.READY, boot_done
    by_key: dict[str, list[_Instance]] = {}
    for inst in world.instances.values():
        if inst.state == InstanceState.READY:
            by_key.setdefault(inst.key, []).append(inst)
    for key, ready in by_key.items():
        _work(world, key, ready, start_s, end_s)
    for inst in world.instances.values():
        dead = inst.ready_s is not None and inst.ready_s + inst.fate.dies_after_ready_s <= end_s
        if inst.state == InstanceState.READY and dead:
            inst.state = InstanceState.EXITED
            world.deaths += 1
            queue = world.queues.get(inst.key)
            if inst.busy and queue:
                # The batch in flight is lost and goes back to the queue.
                queue[0].remaining_gpu_s += world.batch_gpu_s


def _work(world: _World, key: str, ready: list[_Instance], start_s: float, end_s: float) -> None:
    queue = world.queues.get(key, [])
    speeds = [world.throughput.speed(i.offer.gpu_name) for i in ready]
    spans = [max(0.0, end_s - max(start_s, end_s if i.ready_s is None else i.ready_s)) for i in ready]
    rate = sum(speeds)
    budget = sum(s * span for s, span in zip(speeds, spans, strict=True))
    used = 0.0
    while queue and used < budget:
        head = queue[0]
        take = min(head.remaining_gpu_s, budget - used)
        head.remaining_gpu_s -= take
        used += take
        if head.remaining_gpu_s <= 1e-9:
            head.done_s = end_s - (budget - used) / rate if rate > 0 else end_s
            queue.pop(0)
    ran_out_s = end_s - (budget - used) / rate if rate > 0 else end_s
    for inst in ready:
        inst.busy = bool(queue)
        if used > 0:
            inst.last_busy_s = end_s if queue else ran_out_s


def _snapshot(world: _World, t: float, arrivals: list[Job]) -> Snapshot:
    now = EPOCH + timedelta(seconds=t)
    for back_at, offer in list(world.offers_back_at):
        if back_at <= t:
            world.offers[offer.offer_id] = offer
            world.offers_back_at.remove((back_at, offer))
    keys = {k for k, q in world.queues.items() if q} | {i.key for i in world.instances.values()}
    if not world.per_job:
        keys |= {j.tenant for j in arrivals}
    pending: dict[str, PendingWork] = {}
    for key in keys:
        queue = world.queues.get(key, [])
        work = sum(s.remaining_gpu_s for s in queue)
        oldest = min((s.job.arrival_s for s in queue), default=t)
        pending[key] = PendingWork(key, work, math.ceil(work / world.batch_gpu_s), t - oldest)
    instances = tuple(_view(world, inst, now) for inst in world.instances.values())
    return Snapshot(
        now=now,
        tick_s=world.tick_s,
        tenants={k: world.policy_for(k) for k in keys},
        pending=pending,
        instances=instances,
        offers=tuple(world.offers.values()),
        budgets={k: world.ledger.view(k) for k in keys if k in world.ledger.accounts},
        excluded_machines=frozenset(world.excluded),
        throughput=world.throughput,
        expected_boot_s=world.market.boot_median_s,
    )


def _view(world: _World, inst: _Instance, now: datetime) -> InstanceView:
    def at(seconds: float | None) -> datetime | None:
        return None if seconds is None else EPOCH + timedelta(seconds=seconds)

    return InstanceView(
        instance_id=inst.instance_id,
        tenant=inst.key,
        state=inst.state,
        gpu_name=inst.offer.gpu_name,
        machine_id=inst.offer.machine_id,
        price_per_h_usd=inst.offer.total_per_h_usd,
        created_at=EPOCH + timedelta(seconds=inst.created_s),
        ready_at=at(inst.ready_s),
        last_busy_at=at(inst.last_busy_s),
        in_flight_batches=1 if inst.busy else 0,
        hold_left_usd=world.ledger.hold_left_usd(inst.key, inst.instance_id),
    )


def _apply(world: _World, actions: list[Action], t: float) -> None:
    now = EPOCH + timedelta(seconds=t)
    for action in actions:
        if isinstance(action, Rent):
            _rent(world, action, t, now)
        elif isinstance(action, Destroy):
            inst = world.instances.get(action.instance_id)
            if inst is not None and not (world.keep_idle and action.reason == DestroyReason.IDLE):
                _destroy(world, inst, now, exclude=action.exclude_machine)
        elif isinstance(action, Warn):
            world.warnings += 1
        elif isinstance(action, Fallback):
            world.fallbacks += 1


def _rent(world: _World, action: Rent, t: float, now: datetime) -> None:
    offer = world.offers.get(action.offer_id)
    if offer is None:
        return
    index = world.rentals
    world.rentals += 1
    if random.Random(f"gone-{world.seed}-{index}").random() < world.market.offer_gone_probability:
        # Taken by someone else between search and create (Vast's no_such_ask): gone for a while.
        world.offers_gone += 1
        del world.offers[offer.offer_id]
        world.offers_back_at.append((t + OFFER_GONE_FOR_S, offer))
        return
    if action.tenant not in world.ledger.accounts:
        policy = world.policy_for(action.tenant)
        world.ledger.open(
            action.tenant, daily_cap_usd=policy.daily_cap_usd, monthly_cap_usd=policy.monthly_cap_usd, now=now
        )
    instance_id = f"i{index}"
    try:
        world.ledger.reserve(
            action.tenant,
            instance_id=instance_id,
            price_per_h_usd=offer.total_per_h_usd,
            amount_usd=action.reservation_usd,
            now=now,
        )
    except ReservationRefusedError:
        world.refused += 1
        return
    del world.offers[offer.offer_id]
    fate = draw_fate(world.market, world.seed, index)
    world.instances[instance_id] = _Instance(instance_id, action.tenant, offer, t, fate)
    if fate.stuck:
        world.boot_failures += 1


def _destroy(world: _World, inst: _Instance, now: datetime, *, exclude: bool) -> None:
    world.ledger.settle(inst.key, instance_id=inst.instance_id, now=now)
    del world.instances[inst.instance_id]
    if exclude:
        world.excluded.add(inst.offer.machine_id)
    world.offers[inst.offer.offer_id] = inst.offer


def clairvoyant_bound_usd(
    trace: Trace, *, template: TenantPolicy, offers: list[OfferView], throughput: ThroughputTable, boot_s: float
) -> float:
    """All the trace's work at the best price per unit of work among acceptable offers, plus one boot there."""
    ranked = rank_offers(
        offers,
        filters=template.filters,
        max_price_per_h_usd=template.max_price_per_h_usd,
        excluded_machines=frozenset(),
        throughput=throughput,
    )
    if not ranked:
        raise ValueError("no acceptable offer in the market")
    best = ranked[0].offer
    work_gpu_s = sum(j.images for j in trace.jobs) / throughput.images_per_s[best.gpu_name]
    return (work_gpu_s + boot_s) * best.total_per_h_usd / 3600.0
