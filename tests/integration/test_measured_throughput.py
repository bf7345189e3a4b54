"""The throughput table kept current from real runs: a ready worker's /v1/info (over pinned TLS, with its token) is
recorded as a sample for its GPU model, and later ticks rank offers with the measured figure."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from orchestrator import budgets
from orchestrator.cloud.throughput_samples import instance_source
from orchestrator.db.models import GpuThroughputSample, Instance
from orchestrator.db.session import session_scope
from orchestrator.enums import InstanceStatus
from orchestrator.scheduler.model import Rent
from tests.fixtures.cloud_harness import T0, CloudHarness, add_pending_batch, finish_batch
from tests.fixtures.factories import make_tenant

POLICY: dict[str, Any] = {
    "daily_cap_usd": 10,
    "monthly_cap_usd": 100,
    "soft_cap_usd": 80,
    "scale_up_wait_s": 0,
    "idle_timeout_s": 120,
    "boot_deadline_s": 300,
    "max_instances": 1,
}


def _tenant() -> uuid.UUID:
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes=POLICY, now=T0)
    return tenant.id


def _samples() -> list[tuple[str, float, str]]:
    with session_scope() as session:
        rows = session.scalars(select(GpuThroughputSample).order_by(GpuThroughputSample.id))
        return [(r.gpu_name, r.images_per_s, r.source) for r in rows]


def _rented_gpus(h: CloudHarness) -> list[str]:
    return [a.gpu_name for a in h.tick().actions if isinstance(a, Rent)]


def _boot_and_finish(h: CloudHarness, batch_id: uuid.UUID) -> Instance:
    """Tick until the one instance is ready, then finish its batch; returns the ready row."""
    h.clock.t += 40  # past the fake's 30 s boot
    report = h.tick()
    assert len(report.became_ready) == 1, report
    finish_batch(batch_id, at=h.clock.now())
    with session_scope() as session:
        row = session.get(Instance, report.became_ready[0])
        assert row is not None and row.state == InstanceStatus.READY
        return row


def _idle_out(h: CloudHarness) -> None:
    for _ in range(3):
        h.clock.t += 200
        h.tick()
    assert h.fake.live_instances() == []


def test_a_measured_slow_gpu_is_recorded_at_readiness_and_the_next_rental_prefers_the_other_model(
    cloud_sqlite: CloudHarness,
) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    # Estimates: 4090 200 images/s at 0.358 $/h beats 5090 260 at 0.608 $/h. Measured, the 4090 does only 100.
    h.responders.images_per_s = 100.0
    first = add_pending_batch(tenant_id, assets=8, created_at=h.clock.now())
    assert _rented_gpus(h) == ["RTX 4090"]

    row = _boot_and_finish(h, first)

    assert _samples() == [("RTX 4090", 100.0, instance_source(row.id))]
    h.clock.t += 5
    h.tick()
    assert len(_samples()) == 1  # sampled again only after the interval, not every tick

    _idle_out(h)
    add_pending_batch(tenant_id, assets=8, created_at=h.clock.now())

    # 100 / 0.358 = 279 images/s per $/h against the 5090's 260 / 0.608 = 428: the order flips.
    assert _rented_gpus(h) == ["RTX 5090"]


def test_a_worker_whose_info_cannot_be_read_still_becomes_ready_and_records_nothing(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    h.responders.images_per_s = None  # /v1/info answers 404
    batch = add_pending_batch(tenant_id, assets=4, created_at=h.clock.now())
    assert _rented_gpus(h) == ["RTX 4090"]

    _boot_and_finish(h, batch)

    assert _samples() == []


def test_a_worker_that_fell_back_to_the_cpu_says_nothing_about_its_gpu_model(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    h.responders.images_per_s, h.responders.device = 5.0, "cpu"
    batch = add_pending_batch(tenant_id, assets=4, created_at=h.clock.now())
    assert _rented_gpus(h) == ["RTX 4090"]

    _boot_and_finish(h, batch)
    _idle_out(h)
    add_pending_batch(tenant_id, assets=4, created_at=h.clock.now())

    assert _samples() == []
    assert _rented_gpus(h) == ["RTX 4090"]


def test_samples_are_read_again_after_the_interval_while_the_instance_works(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    tenant_id = _tenant()
    h.responders.images_per_s = 180.0
    batch = add_pending_batch(tenant_id, assets=4, created_at=h.clock.now())
    assert _rented_gpus(h) == ["RTX 4090"]
    h.clock.t += 40
    assert len(h.tick().became_ready) == 1

    h.responders.images_per_s = 220.0
    h.clock.t += h.settings.cloud_throughput_sample_interval_s
    h.tick()

    assert [figure for _, figure, _ in _samples()] == [180.0, 220.0]
    finish_batch(batch, at=h.clock.now())
