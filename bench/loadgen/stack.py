"""The system in its production form on loopback: the API as a uvicorn subprocess with several worker processes and
a real Celery worker, both on one PostgreSQL database and one Redis, configured only through ``ORCH_`` env vars as
deploy/compose.yaml does (``ORCH_ENVIRONMENT=production``, JSON logs, real secrets).

The caller brings the database (migrated here), the broker and the worker models' env vars (the tiny CLIP); this
module starts and stops the processes. Beat is not started: without a cloud nothing needs its ticks, and no lease
expires in a run without faults.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.fixtures.deployment import free_port
from tests.fixtures.factories import TenantWithKey, make_tenant
from tests.fixtures.processes import ManagedProcess, start_worker, wait_until

API_READY_TIMEOUT_S = 60.0
SECRET_BYTES = 32


@dataclass(frozen=True)
class StackConfig:
    """What to start: where the data lives, how many API and Celery processes, and extra env vars for both."""

    database_url: str
    broker_url: str
    data_dir: Path
    worker_env: Mapping[str, str]
    api_workers: int = 2
    celery_concurrency: int = 2
    extra_env: Mapping[str, str] | None = None


@dataclass
class Stack:
    """A running API and Celery worker; ``api_pid`` and ``celery_pid`` are the roots of their process trees."""

    url: str
    api: ManagedProcess
    celery: ManagedProcess
    env: dict[str, str]
    startup_s: float

    @property
    def api_pid(self) -> int:
        """The uvicorn supervisor; its children are the API's worker processes."""
        return self.api.popen.pid

    @property
    def celery_pid(self) -> int:
        """The Celery main process; its children are the pool processes."""
        return self.celery.popen.pid

    def log_tails(self, chars: int = 3000) -> str:
        """The end of each process's log, for a failure message."""
        return "\n".join(f"--- {p.log_path.name} ---\n{p.log()[-chars:]}" for p in (self.api, self.celery))


def stack_environ(config: StackConfig, port: int) -> dict[str, str]:
    """The environment of every process of the stack: the parent's, without its ``ORCH_``/``GPUW_`` settings, plus a
    production configuration on ``config``'s database and broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "GPUW_"))}
    env.update(
        {
            "ORCH_ENVIRONMENT": "production",
            "ORCH_LOG_FORMAT": "json",
            "ORCH_SECRET_KEY": secrets.token_urlsafe(SECRET_BYTES),
            "ORCH_ADMIN_TOKEN": secrets.token_urlsafe(SECRET_BYTES),
            "ORCH_DATA_DIR": str(config.data_dir),
            "ORCH_DATABASE_URL": config.database_url,
            "ORCH_BROKER_URL": config.broker_url,
            "ORCH_API_HOST": "127.0.0.1",
            "ORCH_API_PORT": str(port),
        }
    )
    env.update(config.worker_env)
    env.update(config.extra_env or {})
    return env


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def launch_api(env: dict[str, str], port: int, workers: int, log_path: Path) -> ManagedProcess:
    """Start uvicorn with the app factory and ``workers`` processes, as the compose file runs it (not yet ready)."""
    return ManagedProcess(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "orchestrator.api.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env,
        log_path,
    )


def wait_for_api(api: ManagedProcess, url: str) -> None:
    """Block until the API answers /healthz; fail with its log if it exits or time runs out."""

    def ready() -> bool:
        if api.popen.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {api.popen.returncode}:\n{api.log()[-4000:]}")
        return _healthy(url)

    wait_until(ready, API_READY_TIMEOUT_S, "the API to answer /healthz", interval_s=0.2)


@contextmanager
def running_stack(config: StackConfig) -> Iterator[Stack]:
    """Start the API and the Celery worker on ``config`` (already migrated), yield them, and stop both after."""
    port = free_port()
    env = stack_environ(config, port)
    logs = config.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    began = time.monotonic()
    with ExitStack() as started:
        # The API starts while the Celery worker boots: both spend seconds importing.
        api = launch_api(env, port, config.api_workers, logs / "api.log")
        started.callback(api.stop)
        celery = start_worker(env, logs / "celery.log", concurrency=config.celery_concurrency, name="load")
        started.callback(celery.stop)
        wait_for_api(api, url)
        yield Stack(url=url, api=api, celery=celery, env=env, startup_s=time.monotonic() - began)


def make_tenants(count: int) -> list[TenantWithKey]:
    """``count`` tenants with one API key each, in the database the current process is configured for."""
    return [make_tenant(f"load-{i}-{secrets.token_hex(3)}") for i in range(count)]
