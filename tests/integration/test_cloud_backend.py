"""The cloud backend against real ``gpu-worker serve`` processes over TLS (tiny CLIP, CPU), with the orchestrator API
in a thread on SQLite serving the signed media URLs.

The worker's certificate is pinned: the one made for the instance is accepted, any other refused. Its token is
required. An instance takes at most two batches at once, and every path gives its slot back. Batches follow the
tenant's tiers; when the instance dies mid-batch, the batch finishes on the next backend with one result per asset.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gpu_worker.contract import BatchManifest
from orchestrator import budgets
from orchestrator.backends.cloud import CloudBackend
from orchestrator.clock import utcnow
from orchestrator.cloud.tls import InstanceIdentity, new_instance_identity
from orchestrator.db.models import Asset, Batch, Instance, Result, ResultTag
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, Backend, BatchStatus, InstanceStatus
from orchestrator.errors import BackendUnavailableError
from orchestrator.tasks.jobs import analyze_batch, build_manifest
from tests.fakes.worker_hook import free_port, kill_worker, start_worker
from tests.fixtures.factories import TenantWithKey, make_tenant
from tests.fixtures.processes import ManagedProcess
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.tiny_models import TINY_CLIP_ID
from tests.integration.cloud_stack import MediaTap, jpeg, serve_api, upload_and_plan, wait_tls_healthy

SECRET = "cloud-backend-test-secret-0123456789abcdef"


@dataclass
class TlsWorker:
    """A worker process serving HTTPS with its own identity and token."""

    url: str
    token: str
    identity: InstanceIdentity
    process: ManagedProcess


@dataclass
class Stack:
    """The API, the long-lived worker, and what the tests need to start another."""

    api_url: str
    tap: MediaTap
    worker: TlsWorker
    model_env: dict[str, str]
    folder: Path


def start_tls_worker(model_env: dict[str, str], folder: Path, name: str) -> TlsWorker:
    """A worker started the way a rented instance starts it: token and TLS PEMs in its env."""
    identity, token, port = new_instance_identity(), f"token-{uuid.uuid4().hex}", free_port()
    env = {
        **model_env,
        "GPUW_MODELS_DIR": str(folder / f"{name}-models"),
        "GPUW_TOKEN": token,
        "GPUW_TLS_CERT_PEM": identity.cert_pem,
        "GPUW_TLS_KEY_PEM": identity.key_pem,
    }
    process = start_worker(env, folder / f"{name}.log", port=port)
    worker = TlsWorker(f"https://127.0.0.1:{port}", token, identity, process)
    wait_tls_healthy(worker.url, identity.cert_pem, alive=lambda: process.popen.poll() is None)
    assert process.popen.poll() is None, process.log()[-4000:]
    return worker


@pytest.fixture(scope="module")
def stack(tiny_clip_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """SQLite orchestrator with the API in a thread, and one TLS worker for the module."""
    import orchestrator.backends.in_process as in_process
    import orchestrator.tasks.app as tasks_app
    from gpu_worker.settings import get_settings as worker_settings
    from orchestrator.db.migrate import upgrade
    from orchestrator.db.session import reset_engines
    from orchestrator.settings import get_settings

    folder = tmp_path_factory.mktemp("cloud-backend")
    api_port = free_port()
    env = OrchestratorEnv(
        data_dir=folder,
        database_url=f"sqlite:///{(folder / 'orchestrator.sqlite').as_posix()}",
        broker_url=f"sqla+sqlite:///{(folder / 'queue.sqlite').as_posix()}",
    )
    model_env = {
        "GPUW_CATALOG_PATHS": json.dumps([str(tiny_clip_catalog)]),
        "GPUW_CLIP_MODEL": TINY_CLIP_ID,
        "GPUW_DEVICE": "cpu",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {
            **env.environ(),
            **model_env,
            "GPUW_MODELS_DIR": str(folder / "in-process-models"),  # the in-process fallback in this process
            "ORCH_SECRET_KEY": SECRET,
            "ORCH_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
            "ORCH_CLOUD_WORKER_TIMEOUT_S": "60",
        }.items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        worker_settings.cache_clear()
        reset_engines()
        upgrade(env.database_url)
        patch.setattr(tasks_app, "celery_app", tasks_app.create_celery_app())
        patch.setattr(in_process, "_executor", None)
        tap = MediaTap()
        worker: TlsWorker | None = None
        try:
            with serve_api(api_port, tap) as api_url:
                worker = start_tls_worker(model_env, folder, "worker")
                yield Stack(api_url, tap, worker, model_env, folder)
        finally:
            if worker is not None:
                kill_worker(worker.process)
            reset_engines()
            get_settings.cache_clear()
            worker_settings.cache_clear()


def add_instance(
    tenant_id: uuid.UUID, worker: TlsWorker, *, cert_pem: str | None = None, token: str | None = None
) -> uuid.UUID:
    """A READY instance row for ``worker`` (optionally with a wrong pinned certificate or token)."""
    with session_scope() as session:
        row = Instance(
            tenant_id=tenant_id,
            provider="vast",
            provider_instance_id=str(free_port()),
            label=f"mam-test-{uuid.uuid4().hex[:12]}",
            offer_id="1",
            machine_id=1,
            gpu_name="RTX 4090",
            price_per_h_musd=400_000,
            state=InstanceStatus.READY,
            worker_url=worker.url,
            worker_token=token or worker.token,
            tls_cert_pem=cert_pem or worker.identity.cert_pem,
            ready_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return row.id


def instance(instance_id: uuid.UUID) -> Instance:
    with session_scope() as session:
        row = session.get(Instance, instance_id)
        assert row is not None
        session.expunge(row)
        return row


def set_tiers(tenant: TenantWithKey, tiers: list[str]) -> None:
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes={"tiers": tiers}, now=utcnow())


def one_manifest(stack: Stack, tenant: TenantWithKey) -> tuple[uuid.UUID, BatchManifest]:
    upload = upload_and_plan(stack.api_url, tenant, {"x.jpg": jpeg("blue", "circle", 7)})
    manifest, _ = build_manifest(upload.batch_ids[0])
    return upload.batch_ids[0], manifest


def results_per_asset(asset_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    with session_scope() as session:
        rows = session.execute(
            select(Result.asset_id, func.count()).where(Result.asset_id.in_(asset_ids)).group_by(Result.asset_id)
        )
        return {asset_id: count for asset_id, count in rows}


def test_a_batch_runs_on_the_tenants_ready_instance_over_pinned_tls(stack: Stack) -> None:
    tenant = make_tenant()
    instance_id = add_instance(tenant.id, stack.worker)
    upload = upload_and_plan(
        stack.api_url, tenant, {"red.jpg": jpeg("red", "square", 1), "blue.jpg": jpeg("blue", "circle", 2)}
    )
    before = utcnow()
    assert analyze_batch(str(upload.batch_ids[0])) == "done"

    with session_scope() as session:
        batch = session.get(Batch, upload.batch_ids[0])
        assert batch is not None and batch.backend == Backend.CLOUD
        for asset_id, name in upload.names.items():
            asset = session.get(Asset, asset_id)
            assert asset is not None and asset.status == AssetStatus.DONE, asset and asset.error_message
            top = session.scalars(
                select(ResultTag.tag)
                .where(ResultTag.asset_id == asset_id, ResultTag.tag.like("shape/%"))
                .order_by(ResultTag.score.desc())
            ).first()
            assert top == ("shape/red square" if name == "red.jpg" else "shape/blue circle")
    row = instance(instance_id)
    assert row.in_flight == 0 and row.state == InstanceStatus.READY
    assert row.last_busy_at is not None and row.last_busy_at.replace(tzinfo=before.tzinfo) >= before


def test_a_worker_presenting_another_certificate_is_refused_and_taken_out(stack: Stack) -> None:
    tenant = make_tenant()
    impostor_pin = new_instance_identity().cert_pem  # the row pins a certificate the worker does not have
    instance_id = add_instance(tenant.id, stack.worker, cert_pem=impostor_pin)
    _, manifest = one_manifest(stack, tenant)
    fetched = stack.tap.fetches
    with pytest.raises(BackendUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        CloudBackend(tenant_id=tenant.id, timeout_s=30).execute(manifest)
    assert stack.tap.fetches == fetched  # nothing was sent, so nothing was fetched
    row = instance(instance_id)
    assert row.in_flight == 0
    # Its /healthz cannot prove the pinned identity either: a repeated failure, out of service.
    assert row.state == InstanceStatus.FAILED and "healthz" in (row.last_error or "")


def test_a_wrong_token_makes_the_backend_unavailable_but_keeps_the_healthy_instance(stack: Stack) -> None:
    tenant = make_tenant()
    instance_id = add_instance(tenant.id, stack.worker, token="not-the-token")
    _, manifest = one_manifest(stack, tenant)
    with pytest.raises(BackendUnavailableError, match="HTTP 401"):
        CloudBackend(tenant_id=tenant.id, timeout_s=30).execute(manifest)
    row = instance(instance_id)
    assert row.in_flight == 0 and row.state == InstanceStatus.READY


def test_an_instance_takes_at_most_two_batches_at_once(stack: Stack) -> None:
    tenant = make_tenant()
    instance_id = add_instance(tenant.id, stack.worker)
    _, manifest = one_manifest(stack, tenant)
    backend = CloudBackend(tenant_id=tenant.id, timeout_s=30)
    with session_scope() as session:
        row = session.get(Instance, instance_id)
        assert row is not None
        row.in_flight = 2
    with pytest.raises(BackendUnavailableError, match="no ready cloud instance with a free slot"):
        backend.execute(manifest)
    assert instance(instance_id).in_flight == 2  # a refused batch takes nothing and gives nothing back

    with session_scope() as session:
        row = session.get(Instance, instance_id)
        assert row is not None
        row.in_flight = 1
    result = backend.execute(manifest)
    assert [i.asset_id for i in result.items] == [i.asset_id for i in manifest.items]
    assert instance(instance_id).in_flight == 1  # its own slot came back; the other batch's is still held


def test_a_full_instance_keeps_the_batch_queued_unclaimed_instead_of_sending_it_to_the_cpu(stack: Stack) -> None:
    tenant = make_tenant()
    instance_id = add_instance(tenant.id, stack.worker)
    with session_scope() as session:
        row = session.get(Instance, instance_id)
        assert row is not None
        row.in_flight = 2
    batch_id, _ = one_manifest(stack, tenant)
    assert analyze_batch(str(batch_id)).startswith("waiting: waiting for a cloud GPU")
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None and batch.status == BatchStatus.PENDING and batch.attempts == 0
        assert "waiting for a cloud GPU" in (batch.last_error or "")


def test_a_tenant_without_the_cloud_tier_never_uses_its_instance(stack: Stack) -> None:
    tenant = make_tenant()
    instance_id = add_instance(tenant.id, stack.worker)
    set_tiers(tenant, ["local", "cpu"])  # no local worker is configured: the CPU runs it
    upload = upload_and_plan(stack.api_url, tenant, {"r.jpg": jpeg("red", "square", 3)})
    assert analyze_batch(str(upload.batch_ids[0])) == "done"
    with session_scope() as session:
        batch = session.get(Batch, upload.batch_ids[0])
        assert batch is not None and batch.backend == Backend.IN_PROCESS
    assert instance(instance_id).last_busy_at is None


def test_a_cloud_only_tenant_without_an_instance_waits_with_a_reason(stack: Stack) -> None:
    tenant = make_tenant()
    set_tiers(tenant, ["cloud"])
    batch_id, _ = one_manifest(stack, tenant)
    assert (
        analyze_batch(str(batch_id)) == "waiting: no allowed backend is available now (tiers: cloud); waiting for one"
    )
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None and batch.status == BatchStatus.PENDING and batch.attempts == 0


def test_when_the_instance_dies_mid_batch_the_batch_finishes_on_the_next_backend_once(stack: Stack) -> None:
    doomed = start_tls_worker(stack.model_env, stack.folder, "doomed")
    try:
        tenant = make_tenant()
        instance_id = add_instance(tenant.id, doomed)
        set_tiers(tenant, ["cloud", "cpu"])
        upload = upload_and_plan(
            stack.api_url, tenant, {"a.jpg": jpeg("red", "square", 4), "b.jpg": jpeg("blue", "circle", 5)}
        )
        # The worker has the batch and is fetching its media when its process is killed.
        stack.tap.hook = lambda: kill_worker(doomed.process)
        assert analyze_batch(str(upload.batch_ids[0])) == "done"
        assert doomed.process.popen.poll() is not None
    finally:
        stack.tap.hook = None
        kill_worker(doomed.process)

    with session_scope() as session:
        batch = session.get(Batch, upload.batch_ids[0])
        assert batch is not None and batch.backend == Backend.IN_PROCESS and batch.status == BatchStatus.DONE
        assert batch.attempts == 1  # the fallback happened inside the one claim
        statuses = {a.status for a in session.scalars(select(Asset).where(Asset.job_id == upload.job_id))}
        assert statuses == {AssetStatus.DONE}
    assert results_per_asset(list(upload.names)) == dict.fromkeys(upload.names, 1)
    row = instance(instance_id)
    assert row.state == InstanceStatus.FAILED and row.in_flight == 0
    # A redelivery of the finished batch finds nothing to do and writes nothing.
    assert analyze_batch(str(upload.batch_ids[0])) == "nothing to claim"
    assert results_per_asset(list(upload.names)) == dict.fromkeys(upload.names, 1)
