"""Fixtures of the chaos tests: a private Redis that may be killed, the orchestrator configured on it and a fresh
PostgreSQL database with short leases, the processes a test starts (stopped however it ends), and a seeded random
source for kill moments."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.report import RECORDED
from tests.chaos.stack import CHAOS_SETTINGS, PrivateRedis, SeededRandom
from tests.fakes.worker_hook import free_port
from tests.fixtures.processes import ManagedProcess
from tests.fixtures.services import OrchestratorEnv, _activate


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private, persistent redis-server (never the shared one on 6379, which other tests use and flush)."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PrivateRedis(port=free_port(), data_dir=folder)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop()


@pytest.fixture
def chaos_env(
    pg_url: str, private_redis: PrivateRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OrchestratorEnv]:
    """The production configuration (a fresh PostgreSQL database, the private Redis) with short leases."""
    for key, value in CHAOS_SETTINGS.items():
        monkeypatch.setenv(key, value)
    yield _activate(OrchestratorEnv(data_dir=tmp_path, database_url=pg_url, broker_url=private_redis.url), monkeypatch)
    from orchestrator.db.session import reset_engines
    from orchestrator.settings import get_settings

    reset_engines()
    get_settings.cache_clear()


@pytest.fixture
def chaos_worker_env(chaos_env: OrchestratorEnv, tiny_clip_worker_env: dict[str, str]) -> dict[str, str]:
    """Environment of every process a chaos test starts: the database, the broker, short leases, the tiny CLIP."""
    return {**os.environ, **chaos_env.environ(), **CHAOS_SETTINGS, **tiny_clip_worker_env, "GPUW_DEVICE": "cpu"}


@pytest.fixture
def processes() -> Iterator[list[ManagedProcess]]:
    """Processes started by a test (killed ones too), killed however it ends (nothing is checked after the test,
    so there is nothing to wait for); the last ones' log tails are printed (pytest shows them when it fails)."""
    started: list[ManagedProcess] = []
    yield started
    for process in started:
        process.kill_group(signal.SIGKILL)
        process.stop()
    for process in started[-4:]:
        print(f"--- {process.log_path.name} (tail) ---\n{process.log()[-2000:]}")


@pytest.fixture
def chaos_random() -> SeededRandom:
    """The random source of kill moments, seeded from ``$CHAOS_SEED``, else from the clock; the seed is printed."""
    seed = int(os.environ.get("CHAOS_SEED") or time.time_ns() % 1_000_000)
    print(f"chaos seed: {seed} (replay with CHAOS_SEED={seed})")
    return SeededRandom(seed=seed, rng=random.Random(seed))


@pytest.fixture
def api_port() -> int:
    """A free port for the API process (the same one across its restarts)."""
    return free_port()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the chaos figures of this run in the CI output, even when every test passed (prints are captured)."""
    if RECORDED:
        terminalreporter.section("chaos figures (also in test-artifacts/chaos/*.jsonl)")
        for line in RECORDED:
            terminalreporter.write_line(line)
