"""A batch in flight on a rented instance is linked to it, so that when the instance vanishes, is destroyed or fails,
its batches go back to the queue at once (not after their leases), and the lost worker's late answer writes nothing.
On SQLite with the embedded queue and on PostgreSQL with Redis, against the fake Vast.ai."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, func, select, text

from gpu_worker.contract import (
    AnalyzerOutput,
    BatchManifest,
    BatchResult,
    ItemResult,
    ManifestItem,
    MediaKind,
    TagScore,
)
from orchestrator import budgets
from orchestrator.backends.cloud import CloudBackend
from orchestrator.batching import Claim, claim_batch, complete_batch, link_instance
from orchestrator.cloud.instances import acquire_slot, enqueue_waiting_batches
from orchestrator.cloud.teardown import destroy_instance
from orchestrator.cloud.tls import new_instance_identity
from orchestrator.db.migrate import downgrade, upgrade
from orchestrator.db.models import Asset, Batch, Instance, Job, Result, Tenant
from orchestrator.db.session import get_engine, session_scope
from orchestrator.enums import AssetStatus, BatchStatus, InstanceStatus, JobStatus
from orchestrator.errors import BackendUnavailableError
from orchestrator.tasks.constants import QUEUE_ANALYZE, TASK_ANALYZE_BATCH
from tests.fakes.worker_hook import free_port
from tests.fixtures.cloud_harness import T0, CloudHarness, add_pending_batch
from tests.fixtures.factories import make_tenant

POLICY = {"daily_cap_usd": 10, "monthly_cap_usd": 100, "soft_cap_usd": 80, "scale_up_wait_s": 0, "max_instances": 1}
LEASE_S = 600.0

Queued = Callable[[], list[str]]


@pytest.fixture(params=["sqlite", "postgresql"])
def cloud(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CloudHarness]:
    """The cloud harness on SQLite (embedded queue) or PostgreSQL (Redis queue)."""
    if request.param == "sqlite":
        broker = f"sqla+sqlite:///{(tmp_path / 'queue.sqlite').as_posix()}"
        harness: CloudHarness = request.getfixturevalue("cloud_sqlite")
    else:
        broker = request.getfixturevalue("redis_url")
        harness = request.getfixturevalue("cloud_pg")
    yield from _with_broker(harness, broker, monkeypatch)


@pytest.fixture
def cloud_lite(cloud_sqlite: CloudHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CloudHarness]:
    """The cloud harness on SQLite with the embedded queue."""
    yield from _with_broker(cloud_sqlite, f"sqla+sqlite:///{(tmp_path / 'queue.sqlite').as_posix()}", monkeypatch)


def _with_broker(harness: CloudHarness, broker: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CloudHarness]:
    import orchestrator.tasks.app as tasks_app
    from orchestrator.settings import get_settings

    monkeypatch.setenv("ORCH_BROKER_URL", broker)
    get_settings.cache_clear()
    monkeypatch.setattr(tasks_app, "celery_app", tasks_app.create_celery_app())
    yield harness
    get_settings.cache_clear()


def queued_analyze_batches() -> list[str]:
    """Batch ids of the analyze messages waiting on the configured broker (Celery message protocol 2)."""
    from orchestrator.settings import get_settings

    broker = get_settings().broker_url
    if broker.startswith("redis"):
        client = redis.Redis.from_url(broker)
        try:
            envelopes = [json.loads(m) for m in client.lrange(QUEUE_ANALYZE, 0, -1)]
        finally:
            client.close()
    else:
        engine = create_engine(broker.removeprefix("sqla+"))
        try:
            with engine.connect() as connection:
                if "kombu_message" not in set(connection.execute(text("SELECT name FROM sqlite_master")).scalars()):
                    return []
                envelopes = [
                    json.loads(p) for p in connection.execute(text("SELECT payload FROM kombu_message")).scalars()
                ]
        finally:
            engine.dispose()
    return sorted(
        json.loads(base64.b64decode(e["body"]))[0][0] for e in envelopes if e["headers"]["task"] == TASK_ANALYZE_BATCH
    )


def _tenant() -> uuid.UUID:
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes=POLICY, now=T0)
    return tenant.id


def _ready_instance(h: CloudHarness, tenant_id: uuid.UUID) -> Instance:
    """Rent and boot one instance for the tenant (its pending batch makes the policy rent)."""
    h.tick()
    h.clock.t += 40  # past the fake's 30 s boot
    h.tick()
    with session_scope() as session:
        (row,) = session.scalars(select(Instance).where(Instance.tenant_id == tenant_id))
        assert row.state == InstanceStatus.READY, row.last_error
        session.expunge(row)
        return row


def _run_on(instance_id: uuid.UUID, batch_id: uuid.UUID, worker: str) -> Claim:
    """What an analyze task and the cloud backend do before posting the batch: claim it, take a slot, link it."""
    with session_scope() as session:
        claim = claim_batch(session, batch_id=batch_id, worker_id=worker, lease_s=LEASE_S)
        assert claim is not None
        assert acquire_slot(session, instance_id=instance_id)
        assert link_instance(session, batch_id=batch_id, instance_id=instance_id)
    return claim


def _answer(batch_id: uuid.UUID) -> BatchResult:
    with session_scope() as session:
        asset_ids = list(session.scalars(select(Asset.id).where(Asset.batch_id == batch_id)))
    items = [
        ItemResult(
            asset_id=str(a),
            outputs={"clip": AnalyzerOutput(model_id="tiny", tags=[TagScore(tag="shape/red square", score=0.9)])},
        )
        for a in asset_ids
    ]
    return BatchResult(batch_id=str(batch_id), items=items)


def _batch(batch_id: uuid.UUID) -> Batch:
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        session.expunge(batch)
        return batch


def _results(batch_id: uuid.UUID) -> int:
    with session_scope() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Result)
                .join(Asset, Asset.id == Result.asset_id)
                .where(Asset.batch_id == batch_id)
            )
            or 0
        )


def test_a_vanished_instances_batch_is_requeued_at_once_and_the_lost_workers_answer_writes_nothing(
    cloud: CloudHarness,
) -> None:
    h = cloud
    tenant_id = _tenant()
    batch_id = add_pending_batch(tenant_id, assets=2, created_at=T0)
    row = _ready_instance(h, tenant_id)
    lost = _run_on(row.id, batch_id, "lost-worker")
    assert _batch(batch_id).instance_id == row.id

    h.provider.destroy(row.provider_instance_id or "")  # gone behind our back, mid-batch
    h.clock.t += 60
    report = h.reconcile()

    assert report.vanished == [row.id] and report.requeued == [batch_id]
    batch = _batch(batch_id)
    assert (batch.status, batch.instance_id, batch.claimed_by) == (BatchStatus.PENDING, None, None)
    assert batch.lease_expires_at is None, "re-queued now, not when the 600 s lease runs out"
    assert queued_analyze_batches() == [str(batch_id)]

    with session_scope() as session:
        assert not complete_batch(session, claim=lost, result=_answer(batch_id), backend="cloud")
    assert _results(batch_id) == 0, "the lost worker's late answer writes nothing"
    with session_scope() as session:
        again = claim_batch(session, batch_id=batch_id, worker_id="next-worker", lease_s=LEASE_S)
    assert again is not None and again.attempt == lost.attempt + 1
    with session_scope() as session:
        assert not complete_batch(session, claim=lost, result=_answer(batch_id), backend="cloud")
        assert complete_batch(session, claim=again, result=_answer(batch_id), backend="in_process")
    assert _results(batch_id) == 2
    assert h.reconcile().requeued == [], "a second pass finds nothing more to release"


def test_destroying_an_instance_releases_only_the_batches_running_on_it(cloud_lite: CloudHarness) -> None:
    h = cloud_lite
    tenant_id = _tenant()
    on_it = add_pending_batch(tenant_id, assets=1, created_at=T0)
    row = _ready_instance(h, tenant_id)
    elsewhere = add_pending_batch(tenant_id, assets=1, created_at=T0)
    finished = add_pending_batch(tenant_id, assets=1, created_at=T0)
    _run_on(row.id, on_it, "worker-a")
    with session_scope() as session:
        assert claim_batch(session, batch_id=elsewhere, worker_id="worker-b", lease_s=LEASE_S) is not None
    done_claim = _run_on(row.id, finished, "worker-c")
    with session_scope() as session:
        assert complete_batch(session, claim=done_claim, result=_answer(finished), backend="cloud")

    state = destroy_instance(h.factory, h.provider, instance_id=row.id, now=h.clock.now(), reason="budget")

    assert state == InstanceStatus.DESTROYED
    assert _batch(on_it).status == BatchStatus.PENDING
    assert (_batch(elsewhere).status, _batch(elsewhere).claimed_by) == (BatchStatus.RUNNING, "worker-b")
    assert _batch(finished).status == BatchStatus.DONE
    assert queued_analyze_batches() == [str(on_it)]
    assert h.fake.live_instances() == []


def test_a_batch_on_its_last_attempt_fails_with_its_instance_instead_of_waiting(cloud_lite: CloudHarness) -> None:
    h = cloud_lite
    tenant_id = _tenant()
    batch_id = add_pending_batch(tenant_id, assets=2, created_at=T0)
    row = _ready_instance(h, tenant_id)
    with session_scope() as session:
        stored = session.get(Batch, batch_id)
        assert stored is not None
        stored.max_attempts = 1
    _run_on(row.id, batch_id, "last-try")
    h.provider.destroy(row.provider_instance_id or "")
    h.clock.t += 60

    report = h.reconcile()

    assert report.vanished == [row.id] and report.requeued == []
    assert _batch(batch_id).status == BatchStatus.FAILED
    with session_scope() as session:
        statuses = set(session.scalars(select(Asset.status).where(Asset.batch_id == batch_id)))
        codes = set(session.scalars(select(Asset.error_code).where(Asset.batch_id == batch_id)))
    assert statuses == {AssetStatus.FAILED} and codes == {"analysis_failed"}
    assert queued_analyze_batches() == []


def test_an_instance_failing_a_batch_and_its_health_check_releases_its_other_batch_at_once(
    cloud_lite: CloudHarness,
) -> None:
    tenant_id = _tenant()
    own = add_pending_batch(tenant_id, assets=1, created_at=T0)
    sibling = add_pending_batch(tenant_id, assets=1, created_at=T0)
    with session_scope() as session:
        row = Instance(
            tenant_id=tenant_id,
            provider="vast",
            provider_instance_id="1",
            label=f"mam-test-{uuid.uuid4().hex[:12]}",
            offer_id="101",
            machine_id=11,
            gpu_name="RTX 4090",
            price_per_h_musd=360_000,
            state=InstanceStatus.READY,
            worker_url=f"https://127.0.0.1:{free_port()}",  # nothing answers there: the worker died
            worker_token="t",
            tls_cert_pem=new_instance_identity().cert_pem,
        )
        session.add(row)
        session.flush()
        instance_id = row.id
    _run_on(instance_id, sibling, "hung-worker")  # its call is still waiting on the dead instance
    with session_scope() as session:
        own_claim = claim_batch(session, batch_id=own, worker_id="this-worker", lease_s=LEASE_S)
    assert own_claim is not None
    manifest = BatchManifest(
        batch_id=str(own), items=[ManifestItem(asset_id=str(uuid.uuid4()), media_kind=MediaKind.IMAGE)]
    )

    with pytest.raises(BackendUnavailableError):
        CloudBackend(tenant_id=tenant_id, timeout_s=5).execute(manifest)

    with session_scope() as session:
        stored = session.get(Instance, instance_id)
        assert stored is not None and stored.state == InstanceStatus.FAILED and stored.in_flight == 1
    assert (_batch(sibling).status, _batch(sibling).instance_id) == (BatchStatus.PENDING, None)
    mine = _batch(own)
    assert (mine.status, mine.claimed_by, mine.instance_id) == (BatchStatus.RUNNING, "this-worker", None), (
        "its own batch moves on to the next backend under its claim"
    )
    assert queued_analyze_batches() == [str(sibling)]


def test_when_an_instance_becomes_ready_only_the_tenants_waiting_batches_are_sent_again(
    cloud_lite: CloudHarness,
) -> None:
    tenant_id, other_id = _tenant(), _tenant()
    waiting = add_pending_batch(tenant_id, assets=1, created_at=T0)
    fresh = add_pending_batch(tenant_id, assets=1, created_at=T0)
    others = add_pending_batch(other_id, assets=1, created_at=T0)
    exhausted = add_pending_batch(tenant_id, assets=1, created_at=T0)
    with session_scope() as session:
        for batch_id in (waiting, others, exhausted):
            batch = session.get(Batch, batch_id)
            assert batch is not None
            batch.last_error = "waiting for a cloud GPU (12 s of at most 600 s) before falling back to the CPU"
        stored = session.get(Batch, exhausted)
        assert stored is not None
        stored.attempts = stored.max_attempts

    with session_scope() as session:
        sent = enqueue_waiting_batches(session, tenant_id=tenant_id)

    assert sent == 1
    assert queued_analyze_batches() == [str(waiting)]
    assert fresh not in {uuid.UUID(b) for b in queued_analyze_batches()}, "its first message is still queued"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0004_adds_and_removes_the_link_keeping_every_batch_and_its_assets(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = (
        f"sqlite:///{(tmp_path / 'm.sqlite').as_posix()}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    )
    upgrade(url, "0004")
    tenant_id, job_id, batch_id, asset_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    engine = get_engine(url)
    with engine.begin() as connection:
        connection.execute(Tenant.__table__.insert().values(id=tenant_id, name="t", disabled=False, created_at=T0))
        connection.execute(
            Job.__table__.insert().values(
                id=job_id,
                tenant_id=tenant_id,
                name="",
                status=JobStatus.RUNNING,
                analyzers=[],
                options={},
                notices={},
                created_at=T0,
            )
        )
        connection.execute(
            Batch.__table__.insert().values(
                id=batch_id,
                tenant_id=tenant_id,
                job_id=job_id,
                status=BatchStatus.RUNNING,
                analyzers=[],
                attempts=1,
                max_attempts=5,
                created_at=T0,
                instance_id=uuid.uuid4(),
            )
        )
        connection.execute(
            Asset.__table__.insert().values(
                id=asset_id,
                tenant_id=tenant_id,
                job_id=job_id,
                batch_id=batch_id,
                size_bytes=0,
                original_name="",
                status=AssetStatus.ANALYZING,
                created_at=T0,
                updated_at=T0,
            )
        )

    downgrade(url, "0003")

    with engine.connect() as connection:
        assert "instance_id" not in set(connection.execute(text("SELECT * FROM batches")).keys())
        assert connection.execute(text("SELECT count(*) FROM batches")).scalar_one() == 1
        linked = connection.execute(text("SELECT batch_id FROM assets")).scalar_one()
        assert linked is not None, "rebuilding batches on SQLite would have nulled this"
    upgrade(url)
    with engine.connect() as connection:
        assert "instance_id" in set(connection.execute(text("SELECT * FROM batches")).keys())
