"""``GET /metrics`` of the API on SQLite and PostgreSQL: the figures come from the database rows a test creates
(queues, finished batches, instances, spend, budgets, leak suspects, throughput), HTTP requests are counted per route
template, and only the metrics token or a private peer may read them."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import budgets
from orchestrator.api.main import create_app
from orchestrator.clock import utcnow
from orchestrator.cloud.throughput_samples import instance_source
from orchestrator.db.models import Asset, Batch, GpuThroughputSample, Job
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, BatchStatus, InstanceStatus, JobStatus
from orchestrator.settings import get_settings
from tests.fixtures.factories import TenantWithKey, make_billed_instance, make_tenant
from tests.fixtures.services import OrchestratorEnv

pytestmark = pytest.mark.integration

LOOPBACK = ("127.0.0.1", 50123)
METRICS_TOKEN = "metrics-token-0b7d5e2c9f"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient, **headers: str) -> Samples:
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _job_with_batches(tenant_id: uuid.UUID, batches: list[tuple[BatchStatus, int, datetime]]) -> None:
    """A job with batches of the given status, item count and creation time."""
    with session_scope() as session:
        job = Job(tenant_id=tenant_id, status=JobStatus.RUNNING)
        session.add(job)
        session.flush()
        for status, items, created_at in batches:
            batch = Batch(tenant_id=tenant_id, job_id=job.id, status=status, created_at=created_at)
            session.add(batch)
            session.flush()
            for n in range(items):
                session.add(
                    Asset(
                        tenant_id=tenant_id,
                        job_id=job.id,
                        batch_id=batch.id,
                        sha256=f"{batch.id.hex}{n:032x}",
                        status=AssetStatus.ANALYZING,
                    )
                )


def _finished_batch(tenant_id: uuid.UUID, *, backend: str, status: BatchStatus, seconds: float) -> None:
    finished = utcnow() - timedelta(minutes=5)
    with session_scope() as session:
        job = Job(tenant_id=tenant_id, status=JobStatus.DONE)
        session.add(job)
        session.flush()
        session.add(
            Batch(
                tenant_id=tenant_id,
                job_id=job.id,
                status=status,
                backend=backend,
                started_at=finished - timedelta(seconds=seconds),
                finished_at=finished,
            )
        )


def _budgeted_tenant() -> TenantWithKey:
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(
            session,
            tenant_id=tenant.id,
            changes={"daily_cap_usd": 2, "monthly_cap_usd": 100, "soft_cap_usd": 50},
            now=utcnow() - timedelta(days=1),
        )
    return tenant


def test_metrics_report_the_queues_money_and_instances_in_the_database(orch_env: OrchestratorEnv) -> None:
    busy, other, idle = _budgeted_tenant(), make_tenant(), make_tenant()
    now = utcnow()
    _job_with_batches(
        busy.id,
        [
            (BatchStatus.PENDING, 3, now - timedelta(minutes=10)),
            (BatchStatus.PENDING, 2, now - timedelta(minutes=1)),
            (BatchStatus.RUNNING, 1, now - timedelta(minutes=2)),
        ],
    )
    _job_with_batches(other.id, [(BatchStatus.PENDING, 4, now - timedelta(seconds=30))])
    _finished_batch(busy.id, backend="cloud", status=BatchStatus.DONE, seconds=10)
    _finished_batch(busy.id, backend="cloud", status=BatchStatus.DONE, seconds=30)
    _finished_batch(other.id, backend="local", status=BatchStatus.FAILED, seconds=5)
    started = now - timedelta(minutes=20)
    ready = make_billed_instance(busy.id, state=InstanceStatus.READY, started=started, price_per_h_usd=2.0)
    make_billed_instance(busy.id, state=InstanceStatus.ALERT, started=started, price_per_h_usd=1.0, destroy_attempts=5)
    with session_scope() as session:
        session.add(
            GpuThroughputSample(
                gpu_name="RTX 4090",
                images_per_s=42.5,
                source=instance_source(ready),
                measured_at=now - timedelta(minutes=1),
            )
        )

    samples = scrape(TestClient(create_app(), client=LOOPBACK))
    scraped_at = utcnow()

    assert value(samples, "orch_database_up") == 1
    assert value(samples, "orch_queue_batches", tenant=busy.name, status="pending") == 2
    assert value(samples, "orch_queue_batches", tenant=busy.name, status="running") == 1
    assert value(samples, "orch_queue_items", tenant=busy.name, status="pending") == 5
    assert value(samples, "orch_queue_items", tenant=busy.name, status="running") == 1
    assert value(samples, "orch_queue_batches", tenant=other.name, status="pending") == 1
    assert value(samples, "orch_queue_items", tenant=other.name, status="pending") == 4
    assert value(samples, "orch_queue_batches", tenant=idle.name, status="pending") == 0
    assert 600 <= value(samples, "orch_queue_oldest_pending_age_seconds", tenant=busy.name) < 700
    assert value(samples, "orch_queue_oldest_pending_age_seconds", tenant=idle.name) == 0

    assert value(samples, "orch_batches_finished_total", backend="cloud", status="done") == 2
    assert value(samples, "orch_batches_finished_total", backend="local", status="failed") == 1
    assert value(samples, "orch_batch_run_recent_seconds", backend="cloud", quantile="0.5") == pytest.approx(20)
    assert value(samples, "orch_batches_done_recent", backend="cloud") == 2

    assert value(samples, "orch_instances", state="ready") == 1
    assert value(samples, "orch_instances", state="alert") == 1
    assert value(samples, "orch_instances", state="booting") == 0
    assert value(samples, "orch_instances_destroy_failing") == 1
    assert value(samples, "orch_instances_leak_suspect", tenant=busy.name, reason="idle") == 1
    assert value(samples, "orch_instances_leak_suspect", tenant=busy.name, reason="boot") == 0
    assert value(samples, "orch_worker_images_per_second", instance=str(ready), gpu="RTX 4090") == 42.5

    # Both instances have billed $3/h since `started`; the scrape charges up to its own moment, in memory.
    spent = 3.0 * (scraped_at - started).total_seconds() / 3600
    assert value(samples, "orch_tenant_spend_rate_usd_per_hour", tenant=busy.name) == pytest.approx(3.0)
    assert value(samples, "orch_tenant_spend_rate_usd_per_hour", tenant=other.name) == 0
    assert value(samples, "orch_tenant_spend_usd", tenant=busy.name, period="month") == pytest.approx(spent, abs=0.01)
    assert value(samples, "orch_tenant_spend_usd", tenant=other.name, period="month") == 0
    assert value(samples, "orch_tenant_budget_cap_usd", tenant=busy.name, period="day") == 2
    day_spent = value(samples, "orch_tenant_spend_usd", tenant=busy.name, period="day")
    assert value(samples, "orch_tenant_budget_used_ratio", tenant=busy.name, period="day") == pytest.approx(
        day_spent / 2
    )
    assert value(samples, "orch_tenant_budget_configured", tenant=busy.name) == 1
    assert value(samples, "orch_tenant_budget_configured", tenant=other.name) == 0
    assert value(samples, "orch_tenant_budget_used_ratio", tenant=other.name, period="month") == 0
    assert ("process_cpu_seconds_total", frozenset()) in samples


def test_http_requests_are_counted_per_route_template_and_carry_a_request_id(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    client = TestClient(create_app(), client=LOOPBACK)
    missing = uuid.uuid4()
    answer = client.get(f"/api/v1/jobs/{missing}", headers={**tenant.headers, "X-Request-ID": "req-abc.1"})
    assert answer.status_code == 404
    assert answer.headers["x-request-id"] == "req-abc.1"
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert generated != "bad id with spaces" and len(generated) == 32
    client.get(f"/api/v1/no-such-route/{missing}")

    text = client.get("/metrics").text
    samples = scrape(client)
    assert value(samples, "orch_http_requests_total", method="GET", route="/api/v1/jobs/{job_id}", status="404") == 1
    assert value(samples, "orch_http_requests_total", method="GET", route="/healthz", status="200") == 1
    assert value(samples, "orch_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert str(missing) not in text, "raw paths never become labels"


def test_without_a_token_metrics_answer_private_peers_only_and_never_through_a_proxy(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    app = create_app()
    assert TestClient(app, client=("10.1.2.3", 40000)).get("/metrics").status_code == 200
    assert TestClient(app, client=("::ffff:127.0.0.1", 40000)).get("/metrics").status_code == 200
    public = TestClient(app, client=("203.0.113.9", 40000)).get("/metrics", headers=tenant.headers)
    assert public.status_code == 403
    assert public.json()["detail"]["code"] == "metrics_not_private"
    via_proxy = TestClient(app, client=LOOPBACK).get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert via_proxy.status_code == 403
    assert "/metrics" not in TestClient(app, client=LOOPBACK).get("/api/v1/openapi.json").json()["paths"]


def test_with_a_token_metrics_refuse_tenant_keys_and_the_admin_token_even_from_loopback(
    orch_env: OrchestratorEnv,
) -> None:
    tenant = make_tenant()
    app = create_app(get_settings().model_copy(update={"metrics_token": METRICS_TOKEN}))
    local = TestClient(app, client=LOOPBACK)
    assert local.get("/metrics").status_code == 401
    assert local.get("/metrics", headers=tenant.headers).status_code == 401
    admin = {"Authorization": f"Bearer {orch_env.admin_token}"}
    refused = local.get("/metrics", headers=admin)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    remote = TestClient(app, client=("203.0.113.9", 40000))
    assert remote.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
