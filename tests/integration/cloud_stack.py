"""Shared parts of the cloud tests: the orchestrator API in a thread (it serves the signed media URLs that rented
workers fetch), uploads planned into batches, waiting for a TLS worker with a pinned certificate, and the whole
end-to-end world (PostgreSQL + Redis, the fake Vast.ai whose instances are real workers, the in-process fallback)
with the beat's ticks and the after-test leak checks. A harness clock shared by the fake's billing and the ticks
passes deadlines without sleeping; a provider that records its retry waits instead of sleeping them."""

from __future__ import annotations

import io
import json
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select

from orchestrator import budgets
from orchestrator.batching import plan_batches
from orchestrator.clock import utcnow
from orchestrator.cloud.actuator import TickReport, tick
from orchestrator.cloud.tls import pinned_ssl_context
from orchestrator.db.models import Asset, Batch, BudgetHold, Instance, Result
from orchestrator.db.session import get_sessionmaker, session_scope
from orchestrator.enums import AssetStatus, BatchStatus, InstanceStatus
from orchestrator.providers.vast.client import VastClient
from orchestrator.providers.vast.provider import VastProvider
from orchestrator.settings import get_settings
from orchestrator.tasks.jobs import prepare_asset
from tests.fakes.vast_server import FakeInstance, FakeVast, InstanceFault, _Answer
from tests.fakes.worker_hook import RealWorkerHook, free_port
from tests.fixtures.factories import TenantWithKey, make_tenant
from tests.fixtures.processes import wait_until
from tests.fixtures.tiny_models import TINY_CLIP_ID, draw_shape

SHAPES = {"clip": {"vocabulary": {"shape": ["red square", "blue circle"]}, "threshold": 0.0, "nsfw": False}}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class MediaTap:
    """Runs ``hook`` (once, then forgets it) when a worker first fetches a media URL: a way to act mid-batch."""

    hook: Callable[[], None] | None = None
    fetches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(self, app: Asgi) -> Asgi:
        """The ASGI app with the tap in front of it."""

        async def tapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and str(scope.get("path", "")).startswith("/media/"):
                with self._lock:
                    self.fetches += 1
                    hook, self.hook = self.hook, None
                if hook is not None:
                    hook()
            await app(scope, receive, send)

        return tapped


@contextmanager
def serve_api(port: int, tap: MediaTap) -> Iterator[str]:
    """The orchestrator API (configured by the current ORCH_ env) on 127.0.0.1:``port``; yields its URL."""
    from orchestrator.api.main import create_app

    config = uvicorn.Config(tap.wrap(create_app()), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-api", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{url}/healthz"), 30, "the API to answer")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _answers(url: str, **kwargs: Any) -> bool:
    try:
        return httpx.get(url, timeout=2, **kwargs).status_code == 200
    except httpx.HTTPError:
        return False


def wait_tls_healthy(url: str, cert_pem: str, alive: Callable[[], bool], timeout_s: float = 120) -> None:
    """Wait until the worker at ``url`` answers /healthz 200 over TLS with ``cert_pem`` pinned."""
    context = pinned_ssl_context(cert_pem)
    wait_until(lambda: _answers(f"{url}/healthz", verify=context) or not alive(), timeout_s, f"the worker at {url}")


def jpeg(colour: str, shape: str, seed: int) -> bytes:
    """A small JPEG of a coloured shape that the tiny CLIP tells apart."""
    buffer = io.BytesIO()
    draw_shape(colour, shape, size=128, rng=random.Random(seed)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@dataclass
class Upload:
    """A tenant's sealed, prepared and planned job."""

    job_id: uuid.UUID
    batch_ids: list[uuid.UUID]
    names: dict[uuid.UUID, str]


def upload_and_plan(api_url: str, tenant: TenantWithKey, files: dict[str, bytes], *, batch_size: int = 16) -> Upload:
    """Upload through the API, then prepare and plan as the Celery tasks would (called directly)."""
    with httpx.Client(base_url=api_url, headers=tenant.headers, timeout=30) as client:
        job = client.post("/api/v1/jobs", json={"name": "cloud", "analyzers": ["clip"], "options": SHAPES})
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        sent = client.post(
            f"/api/v1/jobs/{job_id}/files",
            files=[("files", (name, data, "image/jpeg")) for name, data in files.items()],
        )
        assert sent.status_code == 201, sent.text
        accepted = sent.json()["files"]
        for file in accepted:
            assert prepare_asset(file["asset_id"])
        assert client.post(f"/api/v1/jobs/{job_id}/seal").status_code == 200
    with session_scope() as session:
        batch_ids = plan_batches(session, job_id=uuid.UUID(job_id), batch_size=batch_size, max_attempts=3)
    assert batch_ids
    return Upload(uuid.UUID(job_id), batch_ids, {uuid.UUID(f["asset_id"]): f["name"] for f in accepted})


SECRET = "cloud-e2e-test-secret-0123456789abcdef0123"
TICK_INTERVAL_S = 0.5
IDLE_TIMEOUT_S = 3.0
# Instances created with these faults never start their container, so no worker process is started for them.
NO_CONTAINER_FAULTS = frozenset({InstanceFault.STUCK_LOADING, InstanceFault.OCI_ERROR, InstanceFault.EXITED})


@dataclass
class HarnessClock:
    """Real time plus an offset that the test moves forward: the fake bills and the ticks decide on the same time,
    so a deadline is passed without sleeping and the spend still matches the bill."""

    offset_s: float = 0.0

    def monotonic(self) -> float:
        """The fake's clock, in seconds."""
        return time.monotonic() + self.offset_s

    def now(self) -> datetime:
        """The ticks' clock."""
        return utcnow() + timedelta(seconds=self.offset_s)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        self.offset_s += seconds


class HarnessVast(FakeVast):
    """The fake Vast.ai with 429 storms that begin at a given kind of request (its own switch counts any request)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._storms: list[tuple[str, str, int, float]] = []

    def rate_limit_from(self, method: str, path_prefix: str, count: int, retry_after_s: float = 0.0) -> None:
        """The next ``method`` request to ``path_prefix`` and the ``count - 1`` requests after it answer 429."""
        with self._lock:
            self._storms.append((method, path_prefix, count, retry_after_s))

    def handle(self, method: str, target: str, headers: Mapping[str, str], raw_body: bytes) -> _Answer:
        """Start an armed storm when its request arrives, then answer as the fake does."""
        path = urlsplit(target).path
        with self._lock:
            for storm in self._storms:
                if method == storm[0] and path.startswith(storm[1]):
                    self._storms.remove(storm)
                    self.rate_limit(storm[2], retry_after_s=storm[3])
                    break
            return super().handle(method, target, headers, raw_body)


@dataclass
class World:
    """The running fake market with its real-worker hook, the API that serves the media, its media tap, and the
    harness clock of the fake's billing (pass ``clock.now`` to the ticks once it has moved)."""

    fake: HarnessVast
    hook: RealWorkerHook
    api_url: str
    tap: MediaTap
    clock: HarnessClock


@contextmanager
def cloud_world(tiny_clip_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The fake Vast.ai (one RTX 4090 offer) whose instances are real workers, the API in a thread, and the tiny
    CLIP for the in-process fallback of this process. Call it with the orchestrator's database env active."""
    import orchestrator.backends.in_process as in_process
    from gpu_worker.settings import get_settings as worker_settings

    model_env = {
        "GPUW_CATALOG_PATHS": json.dumps([str(tiny_clip_catalog)]),
        "GPUW_CLIP_MODEL": TINY_CLIP_ID,
        "GPUW_DEVICE": "cpu",
    }
    hook = RealWorkerHook(model_env={**model_env, "GPUW_MODELS_DIR": str(tmp_path / "worker-models")}, log_dir=tmp_path)

    def container_starts(instance: FakeInstance) -> Any:
        return None if instance.fault in NO_CONTAINER_FAULTS else hook.on_create(instance)

    clock = HarnessClock()
    fake = HarnessVast(clock=clock.monotonic, on_create=container_starts, on_destroy=hook.on_destroy)
    fake.add_offer(101, machine_id=11, gpu_name="RTX 4090", dph_base=0.35)
    api_port = free_port()
    tap = MediaTap()
    with fake.serve():
        for key, value in {
            **model_env,
            "GPUW_MODELS_DIR": str(tmp_path / "in-process-models"),
            "ORCH_SECRET_KEY": SECRET,
            "ORCH_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
            "ORCH_VAST_API_URL": fake.url,
            "ORCH_VAST_API_KEY": fake.api_key,
            "ORCH_CLOUD_WORKER_TIMEOUT_S": "60",
        }.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        worker_settings.cache_clear()
        monkeypatch.setattr(in_process, "_executor", None)  # built afresh from these GPUW_ settings
        try:
            with serve_api(api_port, tap) as api_url:
                yield World(fake, hook, api_url, tap, clock)
        finally:
            for instance_id in hook.alive():
                print(f"--- instance {instance_id} worker log ---\n{hook.log(instance_id)[-3000:]}")
            worker_settings.cache_clear()
    assert hook.alive() == [], "a worker process outlived the test"


def tick_once(*, provider: VastProvider | None = None, now: Callable[[], datetime] = utcnow) -> TickReport:
    """One scheduler tick as the beat would run it, whatever it reports."""
    settings = get_settings()
    provider = provider or VastProvider.from_settings(settings)
    return tick(get_sessionmaker(), provider, now=now(), settings=settings)


def run_ticks(
    until: Callable[[TickReport], bool],
    timeout_s: float,
    what: str,
    *,
    provider: VastProvider | None = None,
    now: Callable[[], datetime] = utcnow,
) -> list[TickReport]:
    """Tick the scheduler as the beat would until ``until`` holds for a tick's report; every tick must go well."""
    provider = provider or VastProvider.from_settings(get_settings())
    reports: list[TickReport] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        report = tick_once(provider=provider, now=now)
        reports.append(report)
        assert report.aborted is None and not report.errors, report
        if until(report):
            return reports
        time.sleep(TICK_INTERVAL_S)
    raise TimeoutError(f"no tick saw {what} in {timeout_s}s; last report: {reports[-1] if reports else None}")


def recording_provider(sleeps: list[float]) -> VastProvider:
    """The provider of the current settings whose client records its retry waits in ``sleeps`` instead of sleeping
    them (backoff and Retry-After are asserted, not waited out)."""
    settings = get_settings()
    return VastProvider(VastClient(settings.vast_api_key, settings.vast_api_url, sleep=sleeps.append))


def cloud_tenant(**policy: object) -> TenantWithKey:
    """A tenant that rents one instance as soon as work arrives, and lets it idle out after ``IDLE_TIMEOUT_S``."""
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(
            session,
            tenant_id=tenant.id,
            changes={
                "scale_up_threshold_gpu_s": 0.0,
                "scale_up_wait_s": 0.0,
                "idle_timeout_s": IDLE_TIMEOUT_S,
                "max_instances": 1,
                **policy,
            },
            now=utcnow(),
        )
    return tenant


def two_batches(world: World, tenant: TenantWithKey) -> Upload:
    """A job of four images planned into two batches of two."""
    files = {f"{i}.jpg": jpeg("red" if i % 2 else "blue", "square" if i % 2 else "circle", i) for i in range(4)}
    upload = upload_and_plan(world.api_url, tenant, files, batch_size=2)
    assert len(upload.batch_ids) == 2
    return upload


def assert_each_asset_has_one_result(upload: Upload) -> None:
    """Every asset of the job is done with exactly one result."""
    with session_scope() as session:
        statuses = {a.status for a in session.scalars(select(Asset).where(Asset.job_id == upload.job_id))}
        per_asset = dict(
            session.execute(
                select(Result.asset_id, func.count(Result.id))
                .where(Result.asset_id.in_(list(upload.names)))
                .group_by(Result.asset_id)
            ).all()
        )
    assert statuses == {AssetStatus.DONE}
    assert per_asset == dict.fromkeys(upload.names, 1)


def batch_backends(upload: Upload) -> list[str | None]:
    """The backend that ran each batch of the job; every batch must be done."""
    with session_scope() as session:
        batches = [session.get(Batch, b) for b in upload.batch_ids]
        assert all(b is not None and b.status == BatchStatus.DONE for b in batches)
        return [b.backend for b in batches if b is not None]


def fake_id_of(tenant_id: uuid.UUID) -> int:
    """The fake's id of the tenant's one ready instance."""
    [row] = [r for r in instance_rows(tenant_id) if r.state == InstanceStatus.READY]
    assert row.provider_instance_id is not None
    return int(row.provider_instance_id)


def instance_rows(tenant_id: uuid.UUID) -> list[Instance]:
    """The tenant's instance rows, oldest first, detached."""
    with session_scope() as session:
        rows = list(
            session.scalars(select(Instance).where(Instance.tenant_id == tenant_id).order_by(Instance.created_at))
        )
        for row in rows:
            session.expunge(row)
        return rows


def assert_nothing_leaks(
    world: World, tenant_id: uuid.UUID, *, not_ours: tuple[int, ...] = ()
) -> budgets.BudgetSummary:
    """Nothing bills, no worker runs, every reservation is settled, and the spend is the fake's bill (within one
    tick of accrual: we charge from the tick that reserved to the tick that destroyed), less the bill of the fake
    instances ``not_ours`` (orphans that no row of ours paid for); returns the summary."""
    assert world.fake.live_instances() == []
    assert world.hook.alive() == []
    with session_scope() as session:
        holds = list(session.scalars(select(BudgetHold).where(BudgetHold.tenant_id == tenant_id)))
        assert holds == []
        spent = budgets.summary(session, tenant_id=tenant_id, now=utcnow())
    assert spent.reserved_usd == 0 and spent.live_instances == 0
    one_tick_usd = max((r.price_per_h_usd for r in instance_rows(tenant_id)), default=0.0) * (
        get_settings().scheduler_tick_s / 3600
    )
    billed = world.fake.spent_usd - sum(world.fake.instances[i].charged_usd for i in not_ours)
    assert spent.total_spent_usd == pytest.approx(billed, abs=one_tick_usd + 1e-6)
    return spent
