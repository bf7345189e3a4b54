"""The parts a chaos test kills and starts again: a private Redis, the API as a uvicorn process, and the helpers
that watch the batches of a job while it happens."""

from __future__ import annotations

import os
import random
import signal
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from sqlalchemy import select

from orchestrator.clock import utcnow
from orchestrator.db.models import Batch
from orchestrator.db.session import session_scope
from orchestrator.enums import BatchStatus
from tests.fixtures.processes import ManagedProcess, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]

# Short enough that a dead worker's batch is taken over within seconds: the lease is renewed every third of it
# (2 s), the reaper runs every second and re-sends a batch whose lease expired.
CHAOS_SETTINGS = {
    "ORCH_BATCH_SIZE": "3",
    "ORCH_BATCH_LEASE_S": "6",
    "ORCH_REAPER_INTERVAL_S": "1",
    # Repeated kills may land on the same batch; it must get enough attempts to finish rather than fail.
    "ORCH_BATCH_MAX_ATTEMPTS": "10",
}
# Two pool children share the 2 CI cores; torch's own thread pools in each would only fight over them.
WORKER_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
REDIS_READY_TIMEOUT_S = 10.0
API_READY_TIMEOUT_S = 60.0


@dataclass
class SeededRandom:
    """A random source and the seed it was made from (printed, so that a failing run can be replayed)."""

    seed: int
    rng: random.Random


@dataclass
class PrivateRedis:
    """A redis-server of one test alone on its own port, persisting every write to an append-only file in
    ``data_dir``, so that it can be stopped (gracefully or with SIGKILL) and started again with its queues."""

    port: int
    data_dir: Path
    process: ManagedProcess | None = None
    starts: int = 0
    stopped: list[ManagedProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The broker URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server on the same port and folder, and wait until it answers PING."""
        self.starts += 1
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"]
        self.process = ManagedProcess(args, dict(os.environ), self.data_dir / f"redis-{self.starts}.log")
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            wait_until(lambda: _pings(client), REDIS_READY_TIMEOUT_S, f"redis-server on port {self.port}")
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server with ``sig`` (SIGTERM: it writes and exits; SIGKILL: it just dies)."""
        assert self.process is not None
        self.process.kill_group(sig)
        self.process.stop()
        self.stopped.append(self.process)
        self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def start_api(env: dict[str, str], log_path: Path, port: int) -> ManagedProcess:
    """The orchestrator API as production runs it (``uvicorn --factory``) on 127.0.0.1:``port``; returns once
    /healthz answers."""
    args = [sys.executable, "-m", "uvicorn", "--factory", "orchestrator.api.main:create_app"]
    api = ManagedProcess([*args, "--host", "127.0.0.1", "--port", str(port)], env, log_path)

    def healthy() -> bool:
        if api.popen.poll() is not None:
            raise RuntimeError(f"the API exited with {api.popen.returncode}:\n{api.log()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, API_READY_TIMEOUT_S, "the API process to answer /healthz", interval_s=0.2)
    return api


def start_chaos_worker(
    env: dict[str, str], log_path: Path, *, name: str, concurrency: int = 2, wait: bool = True
) -> ManagedProcess:
    """A production Celery worker on every queue (prefork pool) whose children inherit the inference stack
    imported before the fork (see ``preloaded_worker``); returns once it reports ready, or at once without
    ``wait`` (then call ``wait_for_log("ready.")``)."""
    args = [sys.executable, "-m", "tests.chaos.preloaded_worker", "-A", "orchestrator.tasks.app:celery_app", "worker"]
    args += ["--loglevel=INFO", "--pool=prefork", f"--concurrency={concurrency}", "--queues=ingest,analyze,maintenance"]
    args += [f"--hostname={name}@%h", "--without-gossip", "--without-mingle"]
    worker = ManagedProcess(args, {**env, **WORKER_THREAD_ENV}, log_path, cwd=REPO_ROOT)
    if wait:
        worker.wait_for_log("ready.")
    return worker


def live_claims(job_ids: Iterable[uuid.UUID], *, besides: Iterable[str] = ()) -> dict[str, uuid.UUID]:
    """Worker id (``claimed_by``) -> batch id of the running batches of the jobs under an unexpired lease, leaving
    out the workers in ``besides`` (dead ones whose leases have not run out yet)."""
    with session_scope() as session:
        rows = session.execute(
            select(Batch.claimed_by, Batch.id).where(
                Batch.job_id.in_(list(job_ids)),
                Batch.status == BatchStatus.RUNNING,
                Batch.lease_expires_at > utcnow(),
            )
        ).all()
    skip = set(besides)
    return {str(holder): batch_id for holder, batch_id in rows if holder and holder not in skip}


def wait_for_new_claim(job_ids: Iterable[uuid.UUID], known: set[str], timeout_s: float, what: str) -> None:
    """Block until a worker not in ``known`` holds a running batch of the jobs."""
    jobs = list(job_ids)
    wait_until(lambda: bool(live_claims(jobs, besides=known)), timeout_s, what, interval_s=0.05)


def holder_pid(claimed_by: str) -> int:
    """The process id in a claim's worker id (``host:pid:nonce``): the pool child that runs the batch."""
    return int(claimed_by.split(":")[1])


def batches_done(job_ids: Iterable[uuid.UUID]) -> int:
    """How many batches of the jobs are done."""
    with session_scope() as session:
        return len(
            list(
                session.scalars(
                    select(Batch.id).where(Batch.job_id.in_(list(job_ids)), Batch.status == BatchStatus.DONE)
                )
            )
        )


def log_count(processes: Iterable[ManagedProcess], needle: str) -> int:
    """How many times ``needle`` appears in the logs of ``processes``."""
    return sum(process.log().count(needle) for process in processes)
