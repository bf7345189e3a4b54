"""The scheduler's actuator: build one tick's Snapshot from the database and the provider, call the pure policy,
and apply its actions.

Order of one tick: finish destroys left over from earlier ticks; one list call for all our instances; probe the
workers of booting instances (ready = running, port mapped, /healthz answering with the expected models); sample the
measured throughput of ready workers (at readiness, then now and then) and rank with the current table; charge
every tenant up to now; search offers (once per distinct filter set); ``decide()``; apply its destroys, then its
rentals. A failed list call aborts the tick before anything is decided: it never reads as "no instances".

A rental reserves the money and writes the instance row in one transaction BEFORE the provider's create call, so a
crash after the create leaves a labelled instance that the reconciler matches to its row. Creates are serialized
(one process-wide lock) and at most one is made per tenant per tick.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import budgets
from orchestrator.cloud.cloud_states import store_states, tenant_names
from orchestrator.cloud.instances import LIVE_STATES, enqueue_waiting_batches, live_instances
from orchestrator.cloud.offers import offer_view, provider_filters
from orchestrator.cloud.readiness import probe_health, scheduler_state, worker_url
from orchestrator.cloud.teardown import destroy_instance, finish
from orchestrator.cloud.throughput_samples import WorkerToSample, load_samples, sample_workers
from orchestrator.cloud.tls import new_instance_identity
from orchestrator.db.models import Asset, Batch, ExcludedMachine, Instance, Tenant, TenantBudget
from orchestrator.enums import BatchStatus, InstanceStatus
from orchestrator.errors import CreateFailedError, OfferGoneError, ProviderError, ProviderUnavailableError
from orchestrator.providers.base import LaunchSpec, OfferFilters, Provider, ProviderInstance
from orchestrator.providers.vast.provider import LABEL_PREFIX, make_label
from orchestrator.scheduler import ledger
from orchestrator.scheduler.ledger import ReservationRefusedError
from orchestrator.scheduler.model import (
    Action,
    BudgetView,
    Destroy,
    Fallback,
    InstanceState,
    InstanceView,
    OfferView,
    PendingWork,
    Rent,
    Snapshot,
    TenantPolicy,
    ThroughputTable,
    Tier,
    Warn,
)
from orchestrator.scheduler.offers import load_throughput_table
from orchestrator.scheduler.policy import decide, failure_reason
from orchestrator.scheduler.tenant_state import CloudState, cloud_states
from orchestrator.scheduler.throughput import current_table
from orchestrator.scheduler_events import record_tick
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

# Pending work is estimated as this many reference-GPU images per asset (a video's keyframes and an audio track are
# not known before planning; one image per asset keeps the estimate simple and errs towards renting less).
IMAGES_PER_ASSET = 1.0
# Serializes creates within this process; concurrent processes are fenced by the tenant's budget lock (see _rent).
_CREATE_LOCK = threading.Lock()


def label_prefix(settings: Settings) -> str:
    """The label prefix of this deployment's instances."""
    return f"{LABEL_PREFIX}{settings.cloud_deployment}-"


@dataclass
class TickReport:
    """What one tick saw and did."""

    actions: list[Action] = field(default_factory=list)
    rented: list[uuid.UUID] = field(default_factory=list)
    became_ready: list[uuid.UUID] = field(default_factory=list)
    # Booting instances whose worker reported a failed start (self-check or model load): destroyed this tick.
    failed_boots: list[uuid.UUID] = field(default_factory=list)
    destroyed: list[uuid.UUID] = field(default_factory=list)
    alerts: list[uuid.UUID] = field(default_factory=list)
    warnings: list[Warn] = field(default_factory=list)
    fallbacks: list[Fallback] = field(default_factory=list)
    cloud_states: dict[str, CloudState] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    aborted: str | None = None


@dataclass(frozen=True)
class _Row:
    """The fields of an instance row that one tick needs, detached from any session."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    state: InstanceStatus
    provider_instance_id: str | None
    machine_id: int
    gpu_name: str
    price_per_h_usd: float
    created_at: datetime
    ready_at: datetime | None
    last_busy_at: datetime | None
    in_flight: int
    worker_token: str
    tls_cert_pem: str

    @classmethod
    def of(cls, row: Instance) -> _Row:
        return cls(
            row.id,
            row.tenant_id,
            InstanceStatus(row.state),
            row.provider_instance_id,
            row.machine_id,
            row.gpu_name,
            row.price_per_h_usd,
            row.created_at,
            row.ready_at,
            row.last_busy_at,
            row.in_flight,
            row.worker_token,
            row.tls_cert_pem,
        )


def tick(
    session_factory: sessionmaker[Session],
    provider: Provider,
    *,
    now: datetime,
    settings: Settings,
    throughput: ThroughputTable | None = None,
) -> TickReport:
    """One scheduler tick at ``now``; see the module docstring for its order."""
    report = TickReport()
    throughput = throughput or load_throughput_table()
    _finish_pending_destroys(session_factory, provider, now=now, settings=settings, report=report)
    with session_factory.begin() as session:
        rows = [_Row.of(r) for r in live_instances(session)]
    try:
        listed = {p.id: p for p in provider.list_instances(label_prefix(settings))}
    except ProviderError as exc:
        report.aborted = f"list failed, nothing decided: {exc.message}"
        log.warning("scheduler tick aborted: %s", report.aborted)
        return report
    rows = _probe_booting(session_factory, rows, listed, now=now, settings=settings, report=report)
    throughput = _current_throughput(session_factory, rows, listed, estimates=throughput, now=now, settings=settings)
    snapshot = _snapshot(session_factory, provider, rows, listed, now=now, settings=settings, throughput=throughput)
    report.actions = decide(snapshot)
    report.cloud_states = _store_cloud_states(session_factory, snapshot, report.actions, now=now)
    _apply(session_factory, provider, snapshot, rows, now=now, settings=settings, report=report)
    record_tick(session_factory, snapshot, report.actions, rented=report.rented, now=now)
    return report


def _finish_pending_destroys(
    session_factory: sessionmaker[Session], provider: Provider, *, now: datetime, settings: Settings, report: TickReport
) -> None:
    """Retry destroys that an earlier tick (or a crash) left unfinished, including instances in ALERT."""
    with session_factory.begin() as session:
        pending = [
            r.id for r in live_instances(session) if r.state in (InstanceStatus.DESTROYING, InstanceStatus.ALERT)
        ]
    for instance_id in pending:
        _record_destroy(
            destroy_instance(
                session_factory,
                provider,
                instance_id=instance_id,
                now=now,
                reason="destroy retried",
                max_attempts=settings.cloud_destroy_max_attempts,
            ),
            instance_id,
            report,
        )


def _record_destroy(state: InstanceStatus, instance_id: uuid.UUID, report: TickReport) -> None:
    if state is InstanceStatus.DESTROYED:
        report.destroyed.append(instance_id)
    elif state is InstanceStatus.ALERT:
        report.alerts.append(instance_id)


def _probe_booting(
    session_factory: sessionmaker[Session],
    rows: list[_Row],
    listed: Mapping[str, ProviderInstance],
    *,
    now: datetime,
    settings: Settings,
    report: TickReport,
) -> list[_Row]:
    """Record what the provider says of each row, and promote booting rows whose worker is healthy."""
    expected = settings.default_analyzers
    updated: list[_Row] = []
    for row in rows:
        found = listed.get(row.provider_instance_id) if row.provider_instance_id else None
        if found is None:
            updated.append(row)
            continue
        url = worker_url(found, settings.cloud_worker_port)
        healthy = failed = False
        detail = found.status_msg
        running = scheduler_state(row.state, found) is InstanceState.RUNNING
        if row.state is InstanceStatus.BOOTING and url is not None and running:
            health = probe_health(
                url,
                cert_pem=row.tls_cert_pem,
                token=row.worker_token,
                expected_models=expected,
                timeout_s=settings.cloud_health_timeout_s,
            )
            healthy, failed = health.ready, health.failed
            detail = f"{found.status_msg}; {health.detail}" if found.status_msg else health.detail
        with session_factory.begin() as session:
            stored = session.get(Instance, row.id)
            if stored is None or stored.state not in LIVE_STATES:
                continue
            stored.status_msg = detail[:2000]
            if url is not None:
                stored.worker_url = url
            if failed and stored.state == InstanceStatus.BOOTING:
                # This tick's policy sees FAILED: destroyed and its machine excluded now, not at the boot deadline.
                stored.state = InstanceStatus.FAILED
                stored.last_error = f"worker failed to start: {detail}"[:2000]
                report.failed_boots.append(row.id)
            became_ready = healthy and stored.state == InstanceStatus.BOOTING
            if became_ready:
                stored.state = InstanceStatus.READY
                stored.ready_at = now
                report.became_ready.append(row.id)
            updated.append(_Row.of(stored))
        if became_ready:
            # Batches that waited for a GPU go now, not when the reaper next looks (up to a lease later).
            with session_factory.begin() as session:
                enqueue_waiting_batches(session, tenant_id=stored.tenant_id)
    return updated


def _current_throughput(
    session_factory: sessionmaker[Session],
    rows: list[_Row],
    listed: Mapping[str, ProviderInstance],
    *,
    estimates: ThroughputTable,
    now: datetime,
    settings: Settings,
) -> ThroughputTable:
    """Sample the ready workers that are due, then the estimates with recent measured samples in their place."""
    workers: list[WorkerToSample] = []
    for row in rows:
        found = listed.get(row.provider_instance_id) if row.provider_instance_id else None
        url = worker_url(found, settings.cloud_worker_port) if found is not None else None
        if row.state is InstanceStatus.READY and url is not None:
            workers.append(WorkerToSample(row.id, row.gpu_name, url, row.tls_cert_pem, row.worker_token))
    sample_workers(
        session_factory,
        workers,
        now=now,
        interval=timedelta(seconds=settings.cloud_throughput_sample_interval_s),
        timeout_s=settings.cloud_health_timeout_s,
    )
    max_age = timedelta(seconds=settings.cloud_throughput_max_age_s)
    with session_factory.begin() as session:
        samples = load_samples(session, now=now, max_age=max_age)
    return current_table(estimates, samples, now=now, max_age=max_age)


def _pending_work(session: Session, *, now: datetime, throughput: ThroughputTable) -> dict[str, PendingWork]:
    """Estimated reference-GPU seconds of each tenant's pending and running batches."""
    seconds_per_asset = IMAGES_PER_ASSET / throughput.images_per_s[throughput.reference_gpu]
    open_states = [BatchStatus.PENDING, BatchStatus.RUNNING]
    assets: dict[uuid.UUID, int] = {
        tenant_id: count
        for tenant_id, count in session.execute(
            select(Batch.tenant_id, func.count(Asset.id))
            .join(Asset, Asset.batch_id == Batch.id)
            .where(Batch.status.in_(open_states))
            .group_by(Batch.tenant_id)
        )
    }
    counts = session.execute(
        select(Batch.tenant_id, func.count(Batch.id), func.min(Batch.created_at))
        .where(Batch.status.in_(open_states))
        .group_by(Batch.tenant_id)
    )
    oldest_pending: dict[uuid.UUID, datetime] = {
        tenant_id: oldest
        for tenant_id, oldest in session.execute(
            select(Batch.tenant_id, func.min(Batch.created_at))
            .where(Batch.status == BatchStatus.PENDING)
            .group_by(Batch.tenant_id)
        )
    }
    work: dict[str, PendingWork] = {}
    for tenant_id, batches, _ in counts:
        oldest = oldest_pending.get(tenant_id)
        wait_s = (now - _aware(oldest)).total_seconds() if oldest is not None else 0.0
        gpu_s = assets.get(tenant_id, 0) * seconds_per_asset
        work[str(tenant_id)] = PendingWork(str(tenant_id), gpu_s, batches, max(wait_s, 0.0))
    return work


def _aware(value: datetime) -> datetime:
    # Aggregates bypass the UTC column type on SQLite, which then returns naive values.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _snapshot(
    session_factory: sessionmaker[Session],
    provider: Provider,
    rows: list[_Row],
    listed: Mapping[str, ProviderInstance],
    *,
    now: datetime,
    settings: Settings,
    throughput: ThroughputTable,
) -> Snapshot:
    with session_factory.begin() as session:
        tenant_rows = session.execute(
            select(TenantBudget.tenant_id, TenantBudget.policy)
            .join(Tenant, Tenant.id == TenantBudget.tenant_id)
            .where(Tenant.disabled.is_(False))
        ).all()
        pending = _pending_work(session, now=now, throughput=throughput)
        excluded = frozenset(
            int(m)
            for m in session.scalars(
                select(ExcludedMachine.machine_id).where(ExcludedMachine.provider == provider.name)
            )
        )
    policies: dict[str, TenantPolicy] = {}
    views: dict[str, BudgetView] = {}
    holds_left: dict[str, float] = {}
    for tenant_id, overrides in tenant_rows:
        policies[str(tenant_id)] = budgets.policy_from_json(str(tenant_id), overrides)
        with session_factory.begin() as session:
            account = budgets.accrue(session, tenant_id=tenant_id, now=now)
        views[str(tenant_id)] = ledger.budget_view(account)
        holds_left.update({k: ledger.musd_to_usd(h.left_musd) for k, h in account.live_holds.items()})
    instances = tuple(
        view
        for row in rows
        if (
            view := _instance_view(
                row, listed, now=now, settings=settings, hold_left_usd=holds_left.get(str(row.id), 0.0)
            )
        )
        is not None
    )
    offers = _offers(provider, policies, pending, instances, excluded, now=now)
    return Snapshot(
        now=now,
        tick_s=settings.scheduler_tick_s,
        tenants=policies,
        pending=pending,
        instances=instances,
        offers=offers,
        budgets=views,
        excluded_machines=excluded,
        throughput=throughput,
    )


def _instance_view(
    row: _Row, listed: Mapping[str, ProviderInstance], *, now: datetime, settings: Settings, hold_left_usd: float
) -> InstanceView | None:
    """The policy's view of a row; None for rows the policy must not act on (on their way out, or vanished)."""
    if row.state in (InstanceStatus.DESTROYING, InstanceStatus.ALERT):
        return None
    found = listed.get(row.provider_instance_id) if row.provider_instance_id else None
    if row.state is InstanceStatus.FAILED:
        state = InstanceState.FAILED
    elif found is not None:
        state = scheduler_state(row.state, found)
    elif row.provider_instance_id is None or now - row.created_at < timedelta(seconds=settings.cloud_vanish_grace_s):
        # Not created yet, or too fresh for the provider's list: it counts, so nothing is rented twice.
        state = InstanceState.LOADING
    else:
        return None  # gone from the provider: the reconciler marks it vanished and settles it
    return InstanceView(
        instance_id=str(row.id),
        tenant=str(row.tenant_id),
        state=state,
        gpu_name=row.gpu_name,
        machine_id=row.machine_id,
        price_per_h_usd=row.price_per_h_usd,
        created_at=row.created_at,
        ready_at=row.ready_at,
        last_busy_at=row.last_busy_at,
        in_flight_batches=row.in_flight,
        hold_left_usd=hold_left_usd,
    )


def _offers(
    provider: Provider,
    policies: Mapping[str, TenantPolicy],
    pending: Mapping[str, PendingWork],
    instances: tuple[InstanceView, ...],
    excluded: frozenset[int],
    *,
    now: datetime,
) -> tuple[OfferView, ...]:
    """Offers for every tenant that may rent now: one search per distinct filter set."""
    found: dict[int, OfferView] = {}
    searched: dict[OfferFilters, list[OfferView]] = {}
    for tenant, policy in sorted(policies.items()):
        # An instance this tick destroys as a failure leaves room for its replacement in the same tick.
        live = sum(1 for i in instances if i.tenant == tenant and failure_reason(now, policy, i) is None)
        wants = pending.get(tenant) is not None or live < policy.min_instances
        if Tier.CLOUD not in policy.tiers or not wants or live >= policy.max_instances:
            continue
        query = provider_filters(policy.filters, max_price_per_h_usd=policy.max_price_per_h_usd, excluded=excluded)
        if query not in searched:
            try:
                results = provider.search_offers(query)
            except ProviderError as exc:
                log.warning("offer search failed: %s", exc.message)
                results = []
            searched[query] = [v for v in (offer_view(o, disk_gb=policy.filters.min_disk_gb) for o in results) if v]
        for view in searched[query]:
            found.setdefault(view.offer_id, view)
    return tuple(found.values())


def _store_cloud_states(
    session_factory: sessionmaker[Session], snapshot: Snapshot, actions: list[Action], *, now: datetime
) -> dict[str, CloudState]:
    """Persist what the Warn and Fallback actions mean for each tenant, before any destroy: the router sends the
    tenant's batches to its fallback (or shows the pause) while this tick tears down what it cannot pay for."""
    with session_factory.begin() as session:
        states = cloud_states(snapshot, actions, names=tenant_names(session, list(snapshot.tenants)))
        store_states(session, states, now=now)
    return states


def _apply(
    session_factory: sessionmaker[Session],
    provider: Provider,
    snapshot: Snapshot,
    rows: list[_Row],
    *,
    now: datetime,
    settings: Settings,
    report: TickReport,
) -> None:
    for action in report.actions:
        if isinstance(action, Destroy):
            instance_id = uuid.UUID(action.instance_id)
            state = destroy_instance(
                session_factory,
                provider,
                instance_id=instance_id,
                now=now,
                reason=f"policy: {action.reason.value}",
                exclude=action.exclude_machine,
                max_attempts=settings.cloud_destroy_max_attempts,
            )
            _record_destroy(state, instance_id, report)
        elif isinstance(action, Warn):
            report.warnings.append(action)
            log.warning("tenant %s: %s", action.tenant, action.message)
        elif isinstance(action, Fallback):
            report.fallbacks.append(action)
    rented_tenants: set[str] = set()
    for action in report.actions:
        if isinstance(action, Rent) and action.tenant not in rented_tenants:
            rented_tenants.add(action.tenant)
            live_before = sum(1 for r in rows if str(r.tenant_id) == action.tenant)
            policy = snapshot.tenants[action.tenant]
            _rent(session_factory, provider, action, policy, live_before, now=now, settings=settings, report=report)


def _rent(
    session_factory: sessionmaker[Session],
    provider: Provider,
    action: Rent,
    policy: TenantPolicy,
    live_before: int,
    *,
    now: datetime,
    settings: Settings,
    report: TickReport,
) -> None:
    """Reserve and write the row, then create; the row exists before the provider hears of the rental."""
    tenant_id = uuid.UUID(action.tenant)
    with _CREATE_LOCK:
        identity = new_instance_identity()  # validity is checked against real clocks
        row_id = uuid.uuid4()
        label = make_label(settings.cloud_deployment, str(row_id))
        token = secrets.token_urlsafe(32)
        try:
            with session_factory.begin() as session:
                budgets.reserve(
                    session,
                    tenant_id=tenant_id,
                    instance_id=str(row_id),
                    price_per_h_usd=action.price_per_h_usd,
                    amount_usd=action.reservation_usd,
                    now=now,
                )
                # The reservation holds the tenant's budget lock: a concurrent tick that rented meanwhile shows
                # here as an extra live row, and this rental is dropped (its decision was made on stale state).
                live_now = len(live_instances(session, tenant_id=tenant_id))
                if live_now > live_before:
                    raise _StaleDecisionError
                session.add(
                    Instance(
                        id=row_id,
                        tenant_id=tenant_id,
                        provider=provider.name,
                        label=label,
                        offer_id=str(action.offer_id),
                        machine_id=action.machine_id,
                        gpu_name=action.gpu_name,
                        price_per_h_musd=ledger.usd_to_musd(action.price_per_h_usd),
                        state=InstanceStatus.REQUESTED,
                        worker_token=token,
                        tls_cert_pem=identity.cert_pem,
                        created_at=now,
                    )
                )
        except ReservationRefusedError as exc:
            report.errors.append(f"tenant {action.tenant}: {exc.message}")
            return
        except _StaleDecisionError:
            report.errors.append(f"tenant {action.tenant}: another tick rented meanwhile; skipped")
            return
        spec = LaunchSpec(
            image=settings.cloud_worker_image,
            label=label,
            disk_gb=policy.filters.min_disk_gb,
            # Only what opens this one instance: its token and TLS pair. No provider key, no database or broker URL.
            env={
                "GPUW_TOKEN": token,
                "GPUW_TLS_CERT_PEM": identity.cert_pem,
                "GPUW_TLS_KEY_PEM": identity.key_pem,
                "GPUW_SERVE_ANALYZERS": json.dumps(list(settings.default_analyzers)),
                "GPUW_SERVE_HOST": "0.0.0.0",  # noqa: S104 - inside the container; the provider maps the port
                "GPUW_SERVE_PORT": str(settings.cloud_worker_port),
            },
            ports=(settings.cloud_worker_port,),
        )
        try:
            created = provider.launch(str(action.offer_id), spec)
        except OfferGoneError as exc:
            _give_up(session_factory, row_id, now=now, error=f"offer gone: {exc.message}")
            report.errors.append(f"offer {action.offer_id} was taken; the next tick tries another")
            return
        except CreateFailedError as exc:
            _create_failed(session_factory, row_id, exc, now=now)
            report.errors.append(f"create on offer {action.offer_id} failed: {exc.message}")
            return
        except ProviderUnavailableError as exc:
            # Perhaps created, perhaps not: the row stays REQUESTED and the reconciler adopts or abandons it.
            _note(session_factory, row_id, f"create outcome unknown: {exc.message}")
            report.errors.append(f"create on offer {action.offer_id}: outcome unknown ({exc.message})")
            return
        except ProviderError as exc:
            # Refused before anything was rented (rate limited, credentials).
            _give_up(session_factory, row_id, now=now, error=f"create refused: {exc.message}")
            report.errors.append(f"create on offer {action.offer_id} refused: {exc.message}")
            return
        with session_factory.begin() as session:
            row = session.get(Instance, row_id)
            assert row is not None
            row.provider_instance_id = created.id
            row.state = InstanceStatus.BOOTING
        report.rented.append(row_id)
        log.info("rented %s on offer %s as %s (%s)", action.gpu_name, action.offer_id, created.id, label)


class _StaleDecisionError(Exception):
    """Internal: the tenant's instances changed since the snapshot."""


def _give_up(session_factory: sessionmaker[Session], row_id: uuid.UUID, *, now: datetime, error: str) -> None:
    with session_factory.begin() as session:
        row = session.get(Instance, row_id)
        if row is not None:
            finish(session, row, state=InstanceStatus.DESTROYED, now=now, error=error)


def _note(session_factory: sessionmaker[Session], row_id: uuid.UUID, error: str) -> None:
    with session_factory.begin() as session:
        row = session.get(Instance, row_id)
        if row is not None:
            row.last_error = error[:2000]


def _create_failed(
    session_factory: sessionmaker[Session], row_id: uuid.UUID, exc: CreateFailedError, *, now: datetime
) -> None:
    if exc.instance_id is None:
        _note(session_factory, row_id, f"create failed: {exc.message}")
        return
    # The provider destroyed the contract already (or left a note that it could not); the destroy pass of the
    # next tick confirms it, idempotently, and settles.
    with session_factory.begin() as session:
        row = session.get(Instance, row_id)
        if row is not None:
            row.provider_instance_id = exc.instance_id
            row.state = InstanceStatus.DESTROYING
            row.last_error = f"create failed after a contract: {exc.message}"[:2000]
