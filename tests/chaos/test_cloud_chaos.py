"""Chaos on the rented side, on PostgreSQL + Redis with the fake Vast.ai whose instances are real ``gpu-worker serve``
processes (TLS, pinned certificates, per-instance tokens): rented workers SIGKILLed mid-batch at seeded random
moments, and a storm of provider faults (429s with and without Retry-After, 5xx on list calls, a create that fails
after making its contract, an orphan left by a crashed create, destroys failing three times) around a tenant whose
tight daily cap runs out mid-job. Ticks and reconciler passes interleave with the faults, on the harness clock.

After each: every asset analyzed once or failed with a reason, no batch stuck, nothing leaked (the provider's live
instances are our live rows, and none after the drain), the ledger sums, no hard cap crossed. The figures are
printed and appended to ``test-artifacts/chaos/<scenario>.jsonl``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from orchestrator.cloud.actuator import TickReport
from orchestrator.cloud.reconciler import ReconcileReport, reconcile
from orchestrator.db.models import Batch, ExcludedMachine, Instance
from orchestrator.db.session import get_sessionmaker, session_scope
from orchestrator.enums import Backend, BatchStatus, InstanceStatus
from orchestrator.providers.base import LaunchSpec
from orchestrator.providers.vast.client import MAX_ATTEMPTS
from orchestrator.providers.vast.provider import VastProvider, make_label
from orchestrator.scheduler.model import DestroyReason, Tier
from orchestrator.settings import get_settings
from orchestrator.tasks.jobs import analyze_batch, finalize_job_task
from tests.chaos.cloud_invariants import (
    CREATES,
    LISTS,
    SEARCHES,
    assert_ledger_sums,
    assert_no_instance_leaked,
    assert_within_caps,
    cloud_figures,
    instance_agreement,
)
from tests.chaos.invariants import Counts, assert_settled
from tests.chaos.report import record
from tests.chaos.stack import SeededRandom
from tests.fakes.vast_server import FakeVast, InstanceFault, _Answer
from tests.fakes.worker_hook import kill_worker
from tests.fixtures.factories import TenantWithKey
from tests.fixtures.services import OrchestratorEnv
from tests.integration.cloud_stack import (
    Upload,
    World,
    assert_nothing_leaks,
    cloud_tenant,
    cloud_world,
    instance_rows,
    jpeg,
    recording_provider,
    tick_once,
    upload_and_plan,
)

pytestmark = pytest.mark.integration

BOOT_WAIT_S = 120.0
BATCH_WAIT_S = 120.0
IMAGES_PER_BATCH = 2
# Media fetches of one round: two batches of two images in flight together. The kill waits for the drawn fetch and
# a busy instance; drawing from the first three leaves the round a fetch after it, so the kill always happens.
KILL_AT_FETCH = (1, 3)
# The storm's beat ticks every 10 s: the clock reaches the tight cap in a few ticks.
STORM_TICK_S = 10.0


@pytest.fixture
def world(
    pg_redis_env: OrchestratorEnv, tiny_clip_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """PostgreSQL + Redis, the fake Vast.ai whose instances are real workers, the API, and the CPU fallback."""
    with cloud_world(tiny_clip_catalog, tmp_path, monkeypatch) as world:
        yield world


def upload_batches(world: World, tenant: TenantWithKey, batches: int) -> Upload:
    """A job of ``batches`` batches of two distinct images each."""
    files = {
        f"{i:02d}.jpg": jpeg("red" if i % 2 else "blue", "square" if i % 2 else "circle", i)
        for i in range(batches * IMAGES_PER_BATCH)
    }
    upload = upload_and_plan(world.api_url, tenant, files, batch_size=IMAGES_PER_BATCH)
    assert len(upload.batch_ids) == batches
    return upload


def run_together(batch_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Deliver the batches' analyze messages at once, as concurrent Celery workers would; returns each outcome."""
    outcomes: dict[uuid.UUID, str] = {}
    threads = [
        threading.Thread(target=lambda b=b: outcomes.__setitem__(b, analyze_batch(str(b))), name=f"analyze-{b}")
        for b in batch_ids
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=BATCH_WAIT_S)
    return outcomes


def deliver_until_settled(batch_ids: list[uuid.UUID]) -> int:
    """Deliver again the batches that went back to the queue (a released claim is requeued) until none is open;
    returns how many redeliveries that took."""
    redeliveries = 0
    for _ in range(5):
        with session_scope() as session:
            open_ids = [
                b.id
                for b in (session.get(Batch, i) for i in batch_ids)
                if b is not None and b.status in (BatchStatus.PENDING, BatchStatus.RUNNING)
            ]
        if not open_ids:
            return redeliveries
        for batch_id in open_ids:
            redeliveries += 1
            assert analyze_batch(str(batch_id)) in ("done", "claim lost", "nothing to claim")
    raise AssertionError(f"batches still open after redeliveries: {batch_ids}")


def backends_of(batch_ids: list[uuid.UUID]) -> list[str | None]:
    """The backend that ran each batch."""
    with session_scope() as session:
        return [b.backend for b in (session.get(Batch, i) for i in batch_ids) if b is not None]


def finish(upload: Upload, scenario: str) -> Counts:
    """Finalize the job as its last batch's Celery message would, then check the asset and batch invariants."""
    finalize_job_task(str(upload.job_id))
    return assert_settled([upload.job_id], scenario=scenario)


# -- 1. rented workers killed mid-batch ---------------------------------------------------------------------------


@dataclass
class KillRound:
    """A rented worker SIGKILLed at the round's ``at_fetch``-th media fetch: one of the instances that has a batch
    in flight then, chosen by ``pick``."""

    at_fetch: int
    pick: float
    victim: int | None = None
    outcomes: dict[str, str] = field(default_factory=dict)
    backends: list[str | None] = field(default_factory=list)


def busy_instances(tenant_id: uuid.UUID) -> list[int]:
    """The fake ids of the tenant's ready instances with a batch in flight, oldest first."""
    with session_scope() as session:
        rows = session.scalars(
            select(Instance)
            .where(Instance.tenant_id == tenant_id, Instance.state == InstanceStatus.READY, Instance.in_flight > 0)
            .order_by(Instance.created_at)
        )
        return [int(r.provider_instance_id) for r in rows if r.provider_instance_id is not None]


def arm_kill(world: World, tenant_id: uuid.UUID, round_: KillRound) -> None:
    """When a worker makes the round's ``at_fetch``-th media request (its batch is mid-flight then), SIGKILL the
    worker of a busy instance and have the provider report its container exited."""
    first = world.tap.fetches

    def on_fetch() -> None:
        busy = busy_instances(tenant_id)
        if world.tap.fetches - first < round_.at_fetch or not busy:
            world.tap.hook = on_fetch  # not yet: wait for a later fetch
            return
        round_.victim = busy[int(round_.pick * len(busy))]
        kill_worker(world.hook.processes[round_.victim])
        world.fake.fault(round_.victim, InstanceFault.EXITED)

    world.tap.hook = on_fetch


def ready_count(tenant_id: uuid.UUID) -> int:
    """How many of the tenant's instances are ready."""
    return sum(r.state == InstanceStatus.READY for r in instance_rows(tenant_id))


def ticks(
    world: World, provider: VastProvider, until: Callable[[TickReport], bool], what: str, timeout_s: float = BOOT_WAIT_S
) -> TickReport:
    """Tick on the harness clock until ``until(report)``; every tick must go well."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        report = tick_once(provider=provider, now=world.clock.now)
        assert report.aborted is None and not report.errors, report
        if until(report):
            return report
        time.sleep(0.3)
    raise TimeoutError(f"no tick saw {what} in {timeout_s}s")


def test_rented_workers_killed_mid_batch_hand_their_batches_on_and_are_destroyed_with_their_machines_excluded(
    world: World, chaos_random: SeededRandom
) -> None:
    started = time.monotonic()
    world.fake.add_offer(102, machine_id=12, gpu_name="RTX 4090", dph_base=0.45)
    # Two instances, booted side by side: the first kill leaves another instance to take work.
    tenant = cloud_tenant(tiers=["cloud", "cpu"], min_instances=2, max_instances=2)
    upload = upload_batches(world, tenant, batches=6)
    provider = recording_provider([])
    rng = chaos_random.rng
    rounds = [KillRound(at_fetch=rng.randint(*KILL_AT_FETCH), pick=rng.random()) for _ in range(2)]
    ticks(world, provider, lambda r: ready_count(tenant.id) == 2, "two instances become ready")
    redeliveries = 0

    for index, round_ in enumerate(rounds):
        batch_ids = upload.batch_ids[2 * index : 2 * index + 2]
        arm_kill(world, tenant.id, round_)
        outcomes = run_together(batch_ids)
        assert round_.victim is not None, f"round {index}: no worker was killed ({world.tap.fetches} fetches)"
        # A batch whose claim was taken back while it ran is written by its next delivery.
        assert set(outcomes) == set(batch_ids) and set(outcomes.values()) <= {"done", "claim lost"}, outcomes
        redeliveries += deliver_until_settled(batch_ids)
        round_.outcomes = {str(b): o for b, o in outcomes.items()}
        round_.backends = backends_of(batch_ids)
        # The batch in flight on the dead worker finished on the CPU (the cloud backend tries one slot per
        # delivery); a batch on the other instance finished there.
        assert Backend.IN_PROCESS in round_.backends, round_
        assert set(round_.backends) <= {Backend.CLOUD, Backend.IN_PROCESS}, round_
        # The next tick sees the exited container: destroyed, its log kept, its machine excluded.
        report = ticks(world, provider, lambda r: bool(r.destroyed), "the dead instance destroyed")
        [dead] = [r for r in instance_rows(tenant.id) if r.provider_instance_id == str(round_.victim)]
        assert report.destroyed == [dead.id] and dead.state == InstanceStatus.DESTROYED and dead.in_flight == 0
        assert world.fake.instances[round_.victim].destroyed and dead.logs
        with session_scope() as session:
            assert session.get(ExcludedMachine, ("vast", dead.machine_id)) is not None
        assert instance_agreement(world).agree, "the provider's live instances are not our live rows"

    # Both machines are excluded now: the rest of the job goes to the CPU instead of waiting for a GPU.
    report = ticks(world, provider, lambda r: True, "a tick")
    assert report.rented == [] and report.cloud_states[str(tenant.id)].fallback_tier is Tier.CPU
    rest = upload.batch_ids[4:]
    assert set(run_together(rest).values()) == {"done"}
    assert backends_of(rest) == [Backend.IN_PROCESS, Backend.IN_PROCESS]

    counts = finish(upload, "cloud-worker-killed")
    rows = instance_rows(tenant.id)
    assert sorted(r.machine_id for r in rows) == [11, 12] and {r.state for r in rows} == {InstanceStatus.DESTROYED}
    assert_no_instance_leaked(world)
    spent = assert_nothing_leaks(world, tenant.id)
    sums = assert_ledger_sums(tenant.id)
    caps = assert_within_caps(tenant.id)

    counts.kills, counts.seed, counts.wall_s = len(rounds), chaos_random.seed, round(time.monotonic() - started, 1)
    all_backends = backends_of(upload.batch_ids)
    counts.extra = {
        **cloud_figures(world, [tenant.id]),
        **sums.as_dict(),
        **caps,
        "kill_at_fetch": [r.at_fetch for r in rounds],
        "round_backends": [r.backends for r in rounds],
        "batches_on_cloud": all_backends.count(Backend.CLOUD),
        "batches_on_cpu": all_backends.count(Backend.IN_PROCESS),
        "redeliveries": redeliveries,
        "machines_excluded": sorted(r.machine_id for r in rows),
        "ledger_spent_usd": round(spent.total_spent_usd, 6),
    }
    record(counts)
    assert counts.extra["instances_leaked"] == 0 and counts.duplicates == 0


# -- 2. a storm of provider faults around a tight cap -------------------------------------------------------------


def strip_retry_after(fake: FakeVast, count: int) -> None:
    """The next ``count`` 429 answers come without a Retry-After header (the client falls back to its backoff)."""
    original = fake.handle
    left = [count]

    def handle(method: str, target: str, headers: Any, raw_body: bytes) -> _Answer:
        answer = original(method, target, headers, raw_body)
        if answer.status == 429 and left[0] > 0:
            left[0] -= 1
            answer.headers.pop("Retry-After", None)
        return answer

    fake.handle = handle  # type: ignore[method-assign]


@dataclass
class Storm:
    """The ticks and reconciler passes of the storm, on the harness clock, with what they did."""

    world: World
    provider: VastProvider
    ticks: list[TickReport] = field(default_factory=list)
    passes: list[ReconcileReport] = field(default_factory=list)

    def tick(self) -> TickReport:
        """One scheduler tick."""
        report = tick_once(provider=self.provider, now=self.world.clock.now)
        self.ticks.append(report)
        return report

    def reconcile(self) -> ReconcileReport:
        """One reconciler pass; a pass that went through leaves no instance billing without a row of ours."""
        report = reconcile(get_sessionmaker(), self.provider, now=self.world.clock.now(), settings=get_settings())
        self.passes.append(report)
        if report.aborted is None:
            assert instance_agreement(self.world).provider_only == frozenset(), "an instance leaked"
        return report

    def tick_and_reconcile(self) -> TickReport:
        """A tick, then a reconciler pass, as the beat interleaves them."""
        report = self.tick()
        self.reconcile()
        return report

    def figures(self) -> dict[str, int]:
        """What the ticks and passes counted."""
        return {
            "ticks": len(self.ticks),
            "ticks_aborted": sum(r.aborted is not None for r in self.ticks),
            "reconciler_passes": len(self.passes),
            "reconciler_passes_aborted": sum(p.aborted is not None for p in self.passes),
            "reconciler_orphan_destroys": sum(len(p.orphans_destroyed) for p in self.passes),
            "hard_cap_destroys": sum(
                1 for r in self.ticks for a in r.actions if getattr(a, "reason", None) is DestroyReason.HARD_CAP
            ),
        }


def leave_an_orphan(world: World, provider: VastProvider) -> str:
    """A labelled instance of this deployment that no row knows, on offer 102: what a sibling orchestrator that
    crashed between its create and its commit leaves behind. Its container never starts (no worker process)."""
    world.fake.fault_next_instances(InstanceFault.STUCK_LOADING)
    label = make_label(get_settings().cloud_deployment, str(uuid.uuid4()))
    return provider.launch("102", LaunchSpec(image="worker", label=label, disk_gb=40.0)).id


def test_a_storm_of_provider_faults_around_a_tight_cap_leaks_nothing_and_crosses_no_cap(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    monkeypatch.setenv("ORCH_SCHEDULER_TICK_S", str(STORM_TICK_S))
    get_settings.cache_clear()
    settings = get_settings()
    world.fake.add_offer(102, machine_id=12, gpu_name="RTX 4090", dph_base=0.45)
    # A reservation covers half a minute; the day's cap is about a minute of the cheapest machine.
    daily_cap_usd, monthly_cap_usd = 0.006, 0.05
    tenant = cloud_tenant(
        tiers=["cloud", "cpu"],
        min_runtime_s=30.0,
        daily_cap_usd=daily_cap_usd,
        monthly_cap_usd=monthly_cap_usd,
        soft_cap_usd=monthly_cap_usd,
    )
    upload = upload_batches(world, tenant, batches=3)
    sleeps: list[float] = []
    storm = Storm(world, recording_provider(sleeps))

    # Tick 1: list calls answered 429 without Retry-After, searches 429 with Retry-After, and a create that fails
    # after making its contract, whose destroy is refused three times before it goes through.
    world.fake.rate_limit_from(*LISTS, count=2)
    strip_retry_after(world.fake, 2)
    world.fake.rate_limit_from(*SEARCHES, count=2, retry_after_s=2)
    world.fake.fail_creates_after_contract(1)
    world.fake.rate_limit_destroys(3)
    first = storm.tick()
    assert first.aborted is None and first.rented == [], first
    assert len(first.errors) == 1 and "create on offer 101 failed" in first.errors[0]
    [failed] = instance_rows(tenant.id)
    assert failed.state == InstanceStatus.DESTROYING
    assert world.fake.live_instances() == [], "the failed create's contract was destroyed at once"
    assert sleeps[:2] == [0.5, 1.0], "no Retry-After: exponential backoff"
    assert sleeps[2:4] == [2.0, 2.0], "Retry-After honoured"
    # The reconciler's list call fails for good: it aborts and changes nothing.
    world.fake.fail_lists(MAX_ATTEMPTS)
    assert storm.reconcile().aborted is not None
    assert [r.state for r in instance_rows(tenant.id)] == [InstanceStatus.DESTROYING]

    # Tick 2, with 5xx on the list and a 429 on the create retried: the failed row is settled and the tenant rents
    # again, a machine slow to boot (its container never starts here, so no worker process costs test time). The
    # reconciler then destroys an orphan that a crashed create left behind.
    orphan_id = leave_an_orphan(world, storm.provider)
    world.fake.fault_next_instances(InstanceFault.STUCK_LOADING)
    world.fake.fail_lists(2)
    world.fake.rate_limit_from(*CREATES, count=2, retry_after_s=1)
    second = storm.tick()
    assert second.aborted is None and second.destroyed == [failed.id] and len(second.rented) == 1, second
    passed = storm.reconcile()
    assert passed.aborted is None and passed.orphans_destroyed == [orphan_id]

    # The rented machine is still pulling its image: the job's batches wait for the GPU, spending no attempt.
    [row] = [r for r in instance_rows(tenant.id) if r.state == InstanceStatus.BOOTING]
    assert analyze_batch(str(upload.batch_ids[0])).startswith("waiting")

    # The clock runs on, a tick at a time, until the next tick would cross the daily cap: the instance is destroyed,
    # and its destroy is refused three times (each call's retries exhausted) before it goes through.
    world.fake.rate_limit_destroys(3 * MAX_ATTEMPTS)
    capped = None
    for _ in range(200):
        world.clock.advance(settings.scheduler_tick_s)
        report = storm.tick_and_reconcile()
        assert report.aborted is None and report.rented == [], report
        if any(getattr(a, "reason", None) is DestroyReason.HARD_CAP for a in report.actions):
            capped = report
            break
    assert capped is not None, "the cap was never reached"
    assert capped.destroyed == [] and capped.cloud_states[str(tenant.id)].fallback_tier is Tier.CPU
    retried = [storm.tick_and_reconcile() for _ in range(3)]
    assert [r.destroyed for r in retried] == [[], [], [row.id]]
    assert world.fake.instances[int(row.provider_instance_id or 0)].destroyed

    # The job goes to the CPU; no GPU is rented past the cap.
    assert set(run_together(upload.batch_ids).values()) == {"done"}
    assert backends_of(upload.batch_ids) == [Backend.IN_PROCESS] * 3
    drained = storm.tick_and_reconcile()
    assert drained.rented == [] and drained.aborted is None

    counts = finish(upload, "cloud-provider-storm")
    assert_no_instance_leaked(world)
    spent = assert_nothing_leaks(world, tenant.id, not_ours=(int(orphan_id),))
    sums = assert_ledger_sums(tenant.id)
    caps = assert_within_caps(tenant.id)
    assert {r.state for r in instance_rows(tenant.id)} == {InstanceStatus.DESTROYED}
    # The provider's own bill for our instances stays within the cap too (the orphan was no row's to pay).
    billed_usd = world.fake.spent_usd - world.fake.instances[int(orphan_id)].charged_usd
    assert billed_usd <= daily_cap_usd, billed_usd

    counts.wall_s = round(time.monotonic() - started, 1)
    counts.extra = {
        **cloud_figures(world, [tenant.id]),
        **storm.figures(),
        **sums.as_dict(),
        **caps,
        "retry_waits_recorded_s": sleeps,
        "ledger_spent_usd": round(spent.total_spent_usd, 6),
        "cap_headroom_usd": round(daily_cap_usd - spent.day_spent_usd, 6),
        "provider_billed_ours_usd": round(billed_usd, 6),
    }
    record(counts)
    assert counts.extra["reconciler_orphan_destroys"] == 1 and counts.extra["hard_cap_destroys"] >= 1
