"""Fixtures of the isolation tests: one PostgreSQL + Redis stack with two real API processes per module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
import redis

from orchestrator.rate_limits import KEY_PREFIX
from tests.fixtures.services import PG_ADMIN_URL, REDIS_URL, OrchestratorEnv, redis_db_number
from tests.isolation.api_processes import ApiProcess, api_processes

# Small enough to reach in a test (12 requests), slow enough (one token a second) that the test's pace barely refills.
RATE_LIMIT_PER_MINUTE = 60
RATE_LIMIT_BURST = 12


@dataclass
class Stack:
    """PostgreSQL and Redis, this process configured on them, and two API processes sharing them."""

    env: OrchestratorEnv
    apis: list[ApiProcess]
    redis: redis.Redis


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Started once per module (two uvicorn processes cost seconds of CPU each); rate-limit buckets are emptied
    before each test by :func:`fresh_buckets`."""
    from orchestrator.db.migrate import upgrade
    from orchestrator.db.session import reset_engines
    from orchestrator.settings import get_settings

    name = f"mam_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        pytest.skip("PostgreSQL is not reachable")
    redis_url = f"{REDIS_URL}/{redis_db_number()}"
    client = redis.Redis.from_url(redis_url)
    folder = tmp_path_factory.mktemp("isolation-stack")
    env = OrchestratorEnv(
        data_dir=folder, database_url=PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", broker_url=redis_url
    )
    limits = {"ORCH_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT_PER_MINUTE), "ORCH_RATE_LIMIT_BURST": str(RATE_LIMIT_BURST)}
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in {**env.environ(), **limits}.items():
                patch.setenv(key, value)
            get_settings.cache_clear()
            reset_engines()
            upgrade(env.database_url)
            with api_processes({**env.environ(), **limits}, folder) as apis:
                yield Stack(env=env, apis=apis, redis=client)
    finally:
        reset_engines()
        get_settings.cache_clear()
        client.close()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_buckets(stack: Stack) -> Stack:
    """The stack with every rate-limit bucket full again."""
    for key in stack.redis.scan_iter(f"{KEY_PREFIX}*"):
        stack.redis.delete(key)
    return stack
