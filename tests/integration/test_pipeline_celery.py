"""The whole spine on PostgreSQL + Redis with real Celery worker processes: upload, prepare, plan, analyze on the
CPU with tiny CLIP weights served through the model store, finalize — and survival of a worker killed mid-batch."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from orchestrator.db.models import Asset, Batch, Embedding, Job, Result
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, BatchStatus, JobStatus
from tests.fixtures.factories import jpeg_bytes, make_tenant, truncated_jpeg
from tests.fixtures.processes import ManagedProcess, start_beat, start_worker, wait_until
from tests.fixtures.services import OrchestratorEnv

pytestmark = pytest.mark.integration


@pytest.fixture
def worker_env(pg_redis_env: OrchestratorEnv, tiny_clip_worker_env: dict[str, str]) -> dict[str, str]:
    """Environment of the worker processes: the same database and broker, and the tiny CLIP model."""
    return {**os.environ, **pg_redis_env.environ(), **tiny_clip_worker_env}


@pytest.fixture
def processes() -> Iterator[list[ManagedProcess]]:
    """Processes started by a test, stopped however it ends."""
    started: list[ManagedProcess] = []
    yield started
    for process in started:
        process.stop()
        print(f"--- {process.log_path.name} (tail) ---\n{process.log()[-3000:]}")


def _upload(client: TestClient, headers: dict[str, str], files: list[tuple[str, bytes]], **job: object) -> str:
    job_id = client.post("/api/v1/jobs", json={"name": "spine", **job}, headers=headers).json()["id"]
    answer = client.post(
        f"/api/v1/jobs/{job_id}/files",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        headers=headers,
    )
    assert answer.status_code in (201, 207), answer.text
    return str(job_id)


def _job_status(job_id: str) -> str:
    with session_scope() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return str(job.status)


def test_photos_are_analyzed_on_postgres_and_redis_and_a_corrupt_one_fails_alone(
    worker_env: dict[str, str], pg_redis_env: OrchestratorEnv, processes: list[ManagedProcess], shared_media: Path
) -> None:
    from orchestrator.api.main import create_app

    tenant = make_tenant()
    client = TestClient(create_app())
    photos = [(name, (shared_media / name).read_bytes()) for name in ("bus.jpg", "zidane.jpg", "grace_hopper.jpg")]
    job_id = _upload(client, tenant.headers, [*photos, ("broken.jpg", truncated_jpeg())])
    assert client.post(f"/api/v1/jobs/{job_id}/seal", headers=tenant.headers).status_code == 200

    processes.append(start_worker(worker_env, pg_redis_env.data_dir / "worker.log"))
    wait_until(lambda: _job_status(job_id) == JobStatus.DONE, 180, "the job to finish")

    assets = client.get(f"/api/v1/jobs/{job_id}/assets", headers=tenant.headers).json()["data"]
    by_name = {a["name"]: a for a in assets}
    for name, _ in photos:
        assert by_name[name]["status"] == "done", by_name[name]
        assert by_name[name]["tags"], f"{name} has no tags"
        assert by_name[name]["results"]["clip"]["model_id"]
    assert by_name["broken.jpg"]["status"] == "failed"
    assert by_name["broken.jpg"]["error_code"] == "truncated"
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Embedding)) == len(photos)


def test_worker_killed_with_sigkill_mid_batch_is_taken_over_and_every_asset_is_analyzed_once(
    worker_env: dict[str, str],
    pg_redis_env: OrchestratorEnv,
    processes: list[ManagedProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator.api.main import create_app

    count = 24
    # One batch holding every file, a short lease so that the takeover happens within the test, and a fast reaper.
    settings_env = {"ORCH_BATCH_SIZE": str(count), "ORCH_BATCH_LEASE_S": "4", "ORCH_REAPER_INTERVAL_S": "1"}
    env = {**worker_env, **settings_env}
    for key, value in settings_env.items():
        monkeypatch.setenv(key, value)
    from orchestrator.settings import get_settings

    get_settings.cache_clear()

    tenant = make_tenant()
    client = TestClient(create_app())
    files = [(f"img{i:02d}.jpg", jpeg_bytes(1280, 720, (i * 10 % 255, 90, 200 - i * 5))) for i in range(count)]
    job_id = _upload(client, tenant.headers, files)
    client.post(f"/api/v1/jobs/{job_id}/seal", headers=tenant.headers)

    first = start_worker(env, pg_redis_env.data_dir / "worker-1.log", name="first")
    processes.append(first)

    def batch_running() -> bool:
        with session_scope() as session:
            return session.scalar(select(Batch.status).where(Batch.job_id == uuid.UUID(job_id))) == BatchStatus.RUNNING

    wait_until(batch_running, 120, "the first worker to claim the batch", interval_s=0.02)
    first.kill_group(signal.SIGKILL)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 0, "the killed worker wrote results"
        assert _job_status(job_id) == JobStatus.RUNNING

    processes.append(start_worker(env, pg_redis_env.data_dir / "worker-2.log", name="second"))
    processes.append(start_beat(env, pg_redis_env.data_dir / "beat.log", pg_redis_env.data_dir / "beat-schedule"))
    wait_until(lambda: _job_status(job_id) == JobStatus.DONE, 240, "the second worker to finish the job")

    with session_scope() as session:
        batch = session.scalars(select(Batch).where(Batch.job_id == uuid.UUID(job_id))).one()
        assert batch.status == BatchStatus.DONE
        assert batch.attempts == 2, "the batch should have been claimed once by each worker"
        assets = list(session.scalars(select(Asset).where(Asset.job_id == uuid.UUID(job_id))))
        assert len(assets) == count
        assert all(a.status == AssetStatus.DONE for a in assets)
        per_asset = dict(session.execute(select(Result.asset_id, func.count()).group_by(Result.asset_id)).all())
        assert per_asset == {a.id: 1 for a in assets}, "every asset must have exactly one result"
        assert set(session.scalars(select(Result.batch_attempt))) == {2}


def test_duplicate_delivery_of_a_finished_batch_changes_nothing(
    worker_env: dict[str, str], pg_redis_env: OrchestratorEnv, processes: list[ManagedProcess]
) -> None:
    from orchestrator.api.main import create_app
    from orchestrator.tasks.app import enqueue
    from orchestrator.tasks.constants import TASK_ANALYZE_BATCH

    tenant = make_tenant()
    client = TestClient(create_app())
    job_id = _upload(client, tenant.headers, [("a.jpg", jpeg_bytes()), ("b.jpg", jpeg_bytes(color=(0, 200, 0)))])
    client.post(f"/api/v1/jobs/{job_id}/seal", headers=tenant.headers)
    worker = start_worker(worker_env, pg_redis_env.data_dir / "worker.log")
    processes.append(worker)
    wait_until(lambda: _job_status(job_id) == JobStatus.DONE, 180, "the job to finish")

    def snapshot() -> list[tuple[object, ...]]:
        with session_scope() as session:
            return [tuple(r) for r in session.execute(select(Result.id, Result.updated_at, Result.batch_attempt))]

    before = snapshot()
    with session_scope() as session:
        batch_id = session.scalars(select(Batch.id).where(Batch.job_id == uuid.UUID(job_id))).one()
    assert enqueue(TASK_ANALYZE_BATCH, str(batch_id))
    wait_until(lambda: worker.log().count("nothing to claim") >= 1, 60, "the duplicate to be consumed")
    assert snapshot() == before
