"""Chaos on the production configuration (PostgreSQL, Redis, real Celery worker and beat processes running the
tiny CLIP on the CPU): workers killed with SIGKILL at random moments mid-batch, the broker restarted mid-job, and the
API and the scheduler (beat) killed and restarted while batches run. After each, the invariants of
``tests/chaos/invariants.py`` hold, and the figures are printed and kept under ``test-artifacts/chaos/``."""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from orchestrator.db.models import Batch
from orchestrator.db.session import session_scope
from orchestrator.enums import BatchStatus
from tests.chaos.invariants import (
    assert_results_from_final_claims,
    assert_settled,
    jobs_terminal,
    measure,
    wait_jobs_terminal,
)
from tests.chaos.report import record
from tests.chaos.stack import (
    PrivateRedis,
    SeededRandom,
    batches_done,
    holder_pid,
    live_claims,
    log_count,
    start_api,
    start_chaos_worker,
    wait_for_new_claim,
)
from tests.fixtures.factories import TenantWithKey, jpeg_bytes, make_tenant
from tests.fixtures.processes import ManagedProcess, start_beat, wait_until
from tests.fixtures.services import OrchestratorEnv

pytestmark = pytest.mark.integration

FILES_PER_JOB = 12
KILLS = 6
# Of the kills, this many take the whole worker (parent and pool) down and a new worker is started; the others kill
# the pool child that holds a batch (as the OOM killer would), and the Celery parent forks a new one.
WHOLE_WORKER_KILLS = 1
# Seconds between the moment a fresh worker claims its first batch and the SIGKILL: that first batch also loads the
# model in the pool child, so any moment in this range lands while batches are being processed.
KILL_DELAY_S = (0.0, 2.0)
DRAIN_TIMEOUT_S = 90.0
# Long enough that the workers, beat and the API all notice the broker is gone and must reconnect.
REDIS_DOWN_S = 2.0
# A two-phrase vocabulary and no NSFW model: the first batch of a fresh worker encodes the vocabulary, and the full
# default one would cost a 2-core machine many seconds per pool child.
CLIP_OPTIONS = {"clip": {"vocabulary": {"colour": ["a red image", "a blue image"]}, "threshold": 0.0, "nsfw": False}}


class KillTarget(StrEnum):
    """What one SIGKILL takes down."""

    POOL_CHILD = "pool-child"
    WHOLE_WORKER = "whole-worker"


@dataclass
class Kill:
    """One SIGKILL: what it took down, how long after the claim it was sent, and the batches it struck."""

    target: KillTarget
    after_s: float
    batches: list[str]


def _photos(job_index: int, count: int) -> list[tuple[str, bytes]]:
    """``count`` distinct JPEGs (distinct bytes: the tenant's deduplication must not merge them)."""
    green = (80 + job_index * 40) % 256
    return [
        (f"j{job_index}-{i:02d}.jpg", jpeg_bytes(640, 480, ((37 * i + 91 * job_index) % 256, green, i)))
        for i in range(count)
    ]


def _submit(client: TestClient | httpx.Client, tenant: TenantWithKey, files: list[tuple[str, bytes]]) -> uuid.UUID:
    """Create a job, upload ``files`` and seal it; returns the job id."""
    job = {"name": "chaos", "analyzers": ["clip"], "options": CLIP_OPTIONS}
    created = client.post("/api/v1/jobs", json=job, headers=tenant.headers)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    sent = client.post(
        f"/api/v1/jobs/{job_id}/files",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        headers=tenant.headers,
    )
    assert sent.status_code == 201, sent.text
    sealed = client.post(f"/api/v1/jobs/{job_id}/seal", headers=tenant.headers)
    assert sealed.status_code == 200, sealed.text
    return uuid.UUID(job_id)


def test_workers_killed_with_sigkill_at_random_moments_mid_batch_lose_and_duplicate_nothing(
    chaos_env: OrchestratorEnv,
    chaos_worker_env: dict[str, str],
    processes: list[ManagedProcess],
    chaos_random: SeededRandom,
) -> None:
    from orchestrator.api.main import create_app

    started = time.monotonic()
    logs = chaos_env.data_dir
    tenant = make_tenant()
    client = TestClient(create_app())
    job_ids = [_submit(client, tenant, _photos(j, FILES_PER_JOB)) for j in range(2)]
    workers = [start_chaos_worker(chaos_worker_env, logs / "worker-0.log", name="k0", wait=False)]
    processes.extend([workers[0], start_beat(chaos_worker_env, logs / "beat.log", logs / "beat-schedule")])
    workers[0].wait_for_log("ready.")
    plan = [KillTarget.POOL_CHILD] * (KILLS - WHOLE_WORKER_KILLS) + [KillTarget.WHOLE_WORKER] * WHOLE_WORKER_KILLS
    chaos_random.rng.shuffle(plan)
    print(f"kill plan: {[target.value for target in plan]}")

    dead_holders: set[str] = set()
    kills: list[Kill] = []

    def await_claim(what: str) -> None:
        """Wait for a live claim; when every job finished first (the kills came too late), give the workers more."""
        deadline = time.monotonic() + 60
        while not live_claims(job_ids, besides=dead_holders):
            if jobs_terminal(job_ids):
                job_ids.append(_submit(client, tenant, _photos(len(job_ids), FILES_PER_JOB)))
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after 60s waiting for {what}")
            time.sleep(0.05)

    for round_no, target in enumerate(plan, start=1):
        struck: dict[str, uuid.UUID] = {}
        attempt = 0
        while not struck:  # a kill that comes just after its batch finished strikes nothing, and is made again
            attempt += 1
            await_claim(f"a live worker to claim a batch before kill {round_no}")
            delay = round(chaos_random.rng.uniform(*KILL_DELAY_S), 3)
            time.sleep(delay)
            holders = live_claims(job_ids, besides=dead_holders)
            while not holders:  # finished during the delay, or just now: strike the next claim
                await_claim(f"a batch to strike for kill {round_no}")
                holders = live_claims(job_ids, besides=dead_holders)
            if target is KillTarget.POOL_CHILD:
                victim = chaos_random.rng.choice(sorted(holders))
                os.kill(holder_pid(victim), signal.SIGKILL)  # the Celery parent forks a new child itself
                struck = {victim: holders[victim]}
            else:
                workers[-1].kill_group(signal.SIGKILL)
                # No worker lives now: every live-looking claim is a dead one's, also one taken just before the kill.
                struck = live_claims(job_ids, besides=dead_holders)
                suffix = f"{round_no}" if attempt == 1 else f"{round_no}-{attempt}"
                workers.append(start_chaos_worker(chaos_worker_env, logs / f"worker-{suffix}.log", name=f"k{suffix}"))
                processes.append(workers[-1])
                if not struck:
                    print(f"kill {round_no} ({target}) came after its batch had finished; killing again")
        dead_holders |= set(struck)
        kills.append(Kill(target, delay, sorted(str(batch_id) for batch_id in struck.values())))
        print(f"kill {round_no} ({target}) after {delay}s: struck {len(struck)}, {batches_done(job_ids)} done")
    try:
        wait_jobs_terminal(job_ids, DRAIN_TIMEOUT_S)
    finally:
        counts = measure(job_ids, scenario="celery-worker-sigkill")
        counts.kills, counts.restarts, counts.seed = len(kills), len(workers) - 1, chaos_random.seed
        counts.wall_s = round(time.monotonic() - started, 1)
        counts.extra = {
            "kills": [
                {"target": k.target.value, "after_s": k.after_s, "batches_struck": len(k.batches)} for k in kills
            ],
            "batches_struck": sum(len(kill.batches) for kill in kills),
            "claims_lost_by_late_writers": log_count(workers, "claim lost"),
            "duplicate_deliveries_refused": log_count(workers, "nothing to claim"),
        }
        record(counts)
    assert_settled(job_ids, scenario="celery-worker-sigkill")
    assert assert_results_from_final_claims(job_ids) == counts.analyzed
    assert counts.failed == 0, counts
    assert len(kills) == KILLS and all(kill.batches for kill in kills), f"every kill must strike a batch: {kills}"
    with session_scope() as session:
        struck_batches = {uuid.UUID(batch_id) for kill in kills for batch_id in kill.batches}
        taken_over = session.execute(select(Batch.status, Batch.attempts).where(Batch.id.in_(struck_batches))).all()
    assert taken_over and all(s == BatchStatus.DONE and n >= 2 for s, n in taken_over), "struck batches run again"


class ApiPoller:
    """Polls job statuses through the API as a client would, counting every answer by status code."""

    def __init__(self, http: httpx.Client, tenant: TenantWithKey) -> None:
        self.http, self.tenant = http, tenant
        self.answers: dict[int, int] = {}

    def all_done(self, job_ids: list[uuid.UUID]) -> bool:
        """Whether every job answers ``done``; a 5xx is counted (and failed on later), never skipped."""
        statuses = []
        for job_id in job_ids:
            answer = self.http.get(f"/api/v1/jobs/{job_id}", headers=self.tenant.headers)
            self.answers[answer.status_code] = self.answers.get(answer.status_code, 0) + 1
            statuses.append(answer.json().get("status") if answer.status_code == 200 else None)
        return all(status == "done" for status in statuses)

    def server_errors(self) -> dict[int, int]:
        """The 5xx answers seen so far, by code."""
        return {code: n for code, n in self.answers.items() if code >= 500}


def _assets_through_api(poller: ApiPoller, job_ids: list[uuid.UUID]) -> list[dict[str, object]]:
    return [
        asset
        for job_id in job_ids
        for asset in poller.http.get(f"/api/v1/jobs/{job_id}/assets", headers=poller.tenant.headers).json()["data"]
    ]


def test_broker_api_and_beat_restarted_mid_job_lose_nothing_and_uploads_and_polling_keep_working(
    chaos_env: OrchestratorEnv,
    chaos_worker_env: dict[str, str],
    private_redis: PrivateRedis,
    processes: list[ManagedProcess],
    api_port: int,
) -> None:
    """Two scenarios on one running stack (API as a uvicorn process, a worker, beat), each checked on its own jobs:
    the broker stopped with SIGTERM, then with SIGKILL, and started again; then the API and beat killed with
    SIGKILL, then stopped with SIGTERM, and started again. Work is uploaded and polled through the API throughout."""
    logs = chaos_env.data_dir
    tenant = make_tenant()
    worker = start_chaos_worker(chaos_worker_env, logs / "worker.log", name="steady", wait=False)
    api = start_api(chaos_worker_env, logs / "api-0.log", api_port)
    beat = start_beat(chaos_worker_env, logs / "beat-0.log", logs / "beat-schedule")
    processes.extend([worker, api, beat])
    worker.wait_for_log("ready.")

    with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as http:
        poller = ApiPoller(http, tenant)

        started = time.monotonic()
        job_ids = [_submit(http, tenant, _photos(10, FILES_PER_JOB))]
        outages: list[dict[str, object]] = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            wait_for_new_claim(job_ids, set(), 90, "a batch to be running before the broker goes down")
            in_flight, done = len(live_claims(job_ids)), batches_done(job_ids)
            private_redis.stop(sig)
            time.sleep(REDIS_DOWN_S)
            private_redis.start()
            outages.append({"signal": sig.name, "batches_in_flight": in_flight, "batches_done_before": done})
            # New work through the API after the restart: its broker connection must have come back too.
            job_ids.append(_submit(http, tenant, _photos(11 + len(outages), FILES_PER_JOB // 2)))
        try:
            wait_until(
                lambda: poller.all_done(job_ids), DRAIN_TIMEOUT_S, "the jobs to finish after the broker restarts"
            )
        finally:
            counts = measure(job_ids, scenario="redis-restart")
            counts.restarts, counts.wall_s = len(outages), round(time.monotonic() - started, 1)
            counts.extra = {
                "outages": outages,
                "redis_down_s": REDIS_DOWN_S,
                "worker_broker_reconnects": log_count([worker], "Connected to redis") - 1,
                "poll_answers": {str(code): n for code, n in sorted(poller.answers.items())},
            }
            record(counts)
        assert_settled(job_ids, scenario="redis-restart")
        assert assert_results_from_final_claims(job_ids) == counts.analyzed
        assert counts.failed == 0, counts
        assert worker.popen.poll() is None and beat.popen.poll() is None, "the worker and beat ride out the outage"
        assert counts.extra["worker_broker_reconnects"] >= len(outages), "the worker must have reconnected"

        started, poller.answers = time.monotonic(), {}
        job_ids = [_submit(http, tenant, _photos(20, FILES_PER_JOB))]
        for round_no, sig in enumerate((signal.SIGKILL, signal.SIGTERM), start=1):
            wait_for_new_claim(job_ids, set(), 90, "a batch to be running before the API and beat go down")
            poller.all_done(job_ids)
            api.kill_group(sig)
            beat.kill_group(sig)
            api = start_api(chaos_worker_env, logs / f"api-{round_no}.log", api_port)
            beat = start_beat(chaos_worker_env, logs / f"beat-{round_no}.log", logs / "beat-schedule")
            processes.extend([api, beat])
            job_ids.append(_submit(http, tenant, _photos(20 + round_no, FILES_PER_JOB // 2)))
        try:
            wait_until(lambda: poller.all_done(job_ids), DRAIN_TIMEOUT_S, "the jobs to finish after the restarts")
            assets = _assets_through_api(poller, job_ids)
        finally:
            counts = measure(job_ids, scenario="api-and-beat-restart")
            counts.restarts, counts.wall_s = 4, round(time.monotonic() - started, 1)
            counts.extra = {"poll_answers": {str(code): n for code, n in sorted(poller.answers.items())}}
            record(counts)
        assert_settled(job_ids, scenario="api-and-beat-restart")
        assert assert_results_from_final_claims(job_ids) == counts.analyzed
        assert not poller.server_errors(), poller.answers
        assert len(assets) == counts.assets and {a["status"] for a in assets} == {"done"}
        assert all(a["tags"] for a in assets), "every asset analyzed through the restarts has tags"
