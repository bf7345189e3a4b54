"""The reconciler against the fake Vast.ai: orphans destroyed, unconfirmed creates adopted or given up, vanished
instances marked and settled with their slots freed, and a failed list call changing nothing."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from orchestrator import budgets
from orchestrator.batching import claim_batch, link_instance, renew_lease
from orchestrator.cloud.tls import new_instance_identity
from orchestrator.db.models import Batch, BudgetHold, Instance
from orchestrator.db.session import session_scope
from orchestrator.enums import BatchStatus, InstanceStatus
from orchestrator.providers.base import LaunchSpec
from orchestrator.providers.vast.provider import make_label
from tests.fixtures.cloud_harness import T0, CloudHarness, add_pending_batch
from tests.fixtures.factories import make_tenant

POLICY = {"daily_cap_usd": 10, "monthly_cap_usd": 100, "soft_cap_usd": 80, "scale_up_wait_s": 0, "max_instances": 1}


def _tenant() -> uuid.UUID:
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes=POLICY, now=T0)
    return tenant.id


def _launch_unrecorded(h: CloudHarness, row_id: uuid.UUID, offer_id: str = "101") -> str:
    """An instance of ours whose create answer never reached the database (a crash right after the create)."""
    label = make_label(h.settings.cloud_deployment, str(row_id))
    created = h.provider.launch(offer_id, LaunchSpec(image="img", label=label, disk_gb=40.0))
    return created.id


def _finish_all_work() -> None:
    with session_scope() as session:
        for batch in session.scalars(select(Batch)):
            batch.status = BatchStatus.DONE


def test_a_labelled_instance_without_a_row_is_destroyed_and_others_are_left_alone(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    orphan = _launch_unrecorded(h, uuid.uuid4())
    foreign = h.provider.launch("102", LaunchSpec(image="img", label="mam-otherdeploy-x1", disk_gb=40.0)).id
    report = h.reconcile()
    assert report.orphans_destroyed == [orphan]
    assert [str(i.id) for i in h.fake.live_instances()] == [foreign], "another deployment's instance is not ours"
    h.provider.destroy(foreign)


def test_an_unconfirmed_create_is_adopted_so_a_restarted_orchestrator_rents_nothing_twice(
    cloud_sqlite: CloudHarness,
) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    add_pending_batch(tenant_id, assets=4, created_at=T0)
    row_id = uuid.uuid4()
    label = make_label(h.settings.cloud_deployment, str(row_id))
    with session_scope() as session:
        budgets.reserve(
            session, tenant_id=tenant_id, instance_id=str(row_id), price_per_h_usd=0.36, amount_usd=0.06, now=T0
        )
        session.add(
            Instance(
                id=row_id,
                tenant_id=tenant_id,
                provider="vast",
                label=label,
                offer_id="101",
                machine_id=11,
                gpu_name="RTX 4090",
                price_per_h_musd=360_000,
                state=InstanceStatus.REQUESTED,
                worker_token="t",
                tls_cert_pem=new_instance_identity().cert_pem,
                created_at=T0,
            )
        )
    provider_id = _launch_unrecorded(h, row_id)
    h.provider = h.restarted_provider()
    h.clock.t = 5
    assert h.tick().rented == [], "the requested row counts: no second rental"
    report = h.reconcile()
    assert report.adopted == [row_id] and report.orphans_destroyed == []
    with session_scope() as session:
        row = session.get(Instance, row_id)
        assert row is not None and row.provider_instance_id == provider_id and row.state == InstanceStatus.BOOTING
    assert len(h.fake.instances) == 1
    _finish_all_work()
    h.clock.t = 2000  # boot deadline passed: it never answered /healthz (no TLS pair), so it is destroyed
    h.tick()
    assert h.fake.live_instances() == []


def test_a_create_that_never_answered_and_never_appeared_is_given_up_after_the_grace(
    cloud_sqlite: CloudHarness,
) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    add_pending_batch(tenant_id, assets=4, created_at=T0)
    h.fake.fail_lists(0)
    h.tick()
    (row,) = select_rows()
    with session_scope() as session:
        stored = session.get(Instance, row.id)
        assert stored is not None
        stored.provider_instance_id = None  # as if the create's answer was lost
        stored.state = InstanceStatus.REQUESTED
    h.provider.destroy(next(str(i.id) for i in h.fake.live_instances()))
    h.clock.t = 60
    assert h.reconcile().abandoned == []
    h.clock.t = h.settings.cloud_create_grace_s + 1
    assert h.reconcile().abandoned == [row.id]
    with session_scope() as session:
        assert session.get(BudgetHold, str(row.id)) is None, "its reservation is settled"


def test_a_vanished_instance_is_marked_settled_and_its_slots_freed(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    add_pending_batch(tenant_id, assets=4, created_at=T0)
    h.tick()
    h.clock.t = 40
    h.tick()
    (row,) = select_rows()
    assert row.state == InstanceStatus.READY
    with session_scope() as session:
        stored = session.get(Instance, row.id)
        assert stored is not None
        stored.in_flight = 2
    h.provider.destroy(row.provider_instance_id or "")  # gone behind our back
    h.clock.t = 100
    report = h.reconcile()
    assert report.vanished == [row.id]
    with session_scope() as session:
        stored = session.get(Instance, row.id)
        assert stored is not None and stored.state == InstanceStatus.VANISHED and stored.in_flight == 0
        assert session.get(BudgetHold, str(row.id)) is None
    _finish_all_work()


def test_a_failed_list_call_aborts_the_pass_and_destroys_nothing(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    orphan = _launch_unrecorded(h, uuid.uuid4())
    h.fake.fail_lists(50)
    report = h.reconcile()
    assert report.aborted is not None and report.orphans_destroyed == []
    assert [str(i.id) for i in h.fake.live_instances()] == [orphan]
    h.fake._list_failures = 0
    assert h.reconcile().orphans_destroyed == [orphan]


def test_a_failed_list_call_leaves_the_batches_running_on_a_possibly_gone_instance_alone(
    cloud_sqlite: CloudHarness,
) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    batch_id = add_pending_batch(tenant_id, assets=2, created_at=T0)
    h.tick()
    h.clock.t = 40
    h.tick()
    (row,) = select_rows()
    with session_scope() as session:
        claim = claim_batch(session, batch_id=batch_id, worker_id="w", lease_s=600)
        assert claim is not None and link_instance(session, batch_id=batch_id, instance_id=row.id)
    h.provider.destroy(row.provider_instance_id or "")
    h.clock.t = 100
    h.fake.fail_lists(50)

    report = h.reconcile()

    assert report.aborted is not None and report.vanished == [] and report.requeued == []
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None and batch.status == BatchStatus.RUNNING and batch.instance_id == row.id
        assert renew_lease(session, claim=claim, lease_s=600), "its worker still holds it"
    h.fake._list_failures = 0
    _finish_all_work()


def select_rows() -> list[Instance]:
    with session_scope() as session:
        return list(session.scalars(select(Instance)))
