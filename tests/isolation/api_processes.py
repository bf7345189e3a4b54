"""Real API processes for the isolation tests: ``uvicorn --factory orchestrator.api.main:create_app`` subprocesses,
as production runs them, configured through ORCH_ env vars."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

from tests.fixtures.processes import ManagedProcess, wait_until

START_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ApiProcess:
    """One running API process and an HTTP client pointed at it."""

    process: ManagedProcess
    client: httpx.Client

    @property
    def url(self) -> str:
        """Its base URL."""
        return str(self.client.base_url)


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def api_processes(env: dict[str, str], log_dir: Path, count: int = 2) -> Iterator[list[ApiProcess]]:
    """Start ``count`` API processes with ``env`` (on top of this process's environment); stop them afterwards."""
    started: list[ApiProcess] = []
    try:
        for index in range(count):
            port = free_port()
            args = [sys.executable, "-m", "uvicorn", "--factory", "orchestrator.api.main:create_app"]
            args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
            process = ManagedProcess(args, {**os.environ, **env}, log_dir / f"api-{index}.log")
            started.append(ApiProcess(process, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0)))
        for api in started:
            wait_until(partial(_answers, api.client), START_TIMEOUT_S, f"the API at {api.url}")
        yield started
    finally:
        for api in started:
            api.client.close()
            api.process.stop()
