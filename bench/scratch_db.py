"""A PostgreSQL database that exists only while a benchmark measures in it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from orchestrator.db.session import get_engine, get_sessionmaker

DEFAULT_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str]:
    """Create an empty database on the server of ``admin_url``, yield its URL, and drop it (and our engines) after."""
    import psycopg

    name = f"mam_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        get_engine.cache_clear()
        get_sessionmaker.cache_clear()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
