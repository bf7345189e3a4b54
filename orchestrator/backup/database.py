"""Dump and restore the orchestrator's database: PostgreSQL with pg_dump's custom format and pg_restore, SQLite with
its online backup API (consistent while the API writes). Passwords reach the PostgreSQL tools through the
environment, never their command line."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.backup.manifest import BackupError, DatabaseKind
from orchestrator.db.session import normalise_url

ALEMBIC_TABLE = "alembic_version"
# Long enough for a dump of millions of rows on a small VPS; a hung tool must still end.
TOOL_TIMEOUT_S = 6 * 3600
ERROR_TAIL_CHARS = 600
COPY_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class DatabaseState:
    """What a database holds now: whether our schema exists, whether any table has rows, and its revision."""

    has_tables: bool
    has_rows: bool
    alembic_revision: str | None


def database_kind(url: str) -> DatabaseKind:
    """The engine of ``url``; raises :class:`BackupError` for engines backups do not support."""
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        return DatabaseKind.POSTGRESQL
    if backend == "sqlite":
        return DatabaseKind.SQLITE
    raise BackupError(f"backups support PostgreSQL and SQLite, not {backend}")


def sqlite_path(url: str) -> Path:
    """The file of a SQLite URL; raises :class:`BackupError` for an in-memory database."""
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return Path(database)


def libpq_environment(url: str) -> dict[str, str]:
    """The PG* variables that point pg_dump and pg_restore at ``url``'s server, user, password and database."""
    parsed = make_url(url)
    values = {
        "PGHOST": parsed.host or str(parsed.query.get("host", "") or ""),
        "PGPORT": str(parsed.port or ""),
        "PGUSER": parsed.username or "",
        "PGPASSWORD": parsed.password or "",
        "PGDATABASE": parsed.database or "",
        "PGSSLMODE": str(parsed.query.get("sslmode", "") or ""),
    }
    return {name: value for name, value in values.items() if value}


def _engine(url: str) -> Engine:
    # A private engine, disposed after use: pooled connections would hold locks that pg_restore --clean waits on.
    return create_engine(normalise_url(url))


def inspect_database(url: str) -> DatabaseState:
    """Whether ``url``'s database has our tables, rows in any of them (the Alembic table aside), and its revision."""
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            tables = [name for name in inspect(connection).get_table_names() if name != ALEMBIC_TABLE]
            revision = None
            if inspect(connection).has_table(ALEMBIC_TABLE):
                revision = connection.execute(text(f"SELECT version_num FROM {ALEMBIC_TABLE}")).scalar()  # noqa: S608
            has_rows = any(
                connection.execute(text(f'SELECT 1 FROM "{name}" LIMIT 1')).first() is not None  # noqa: S608
                for name in tables
            )
    except SQLAlchemyError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackupError(f"cannot read the database: {first_line}") from exc
    finally:
        engine.dispose()
    return DatabaseState(has_tables=bool(tables), has_rows=has_rows, alembic_revision=revision)


def _run(args: list[str], *, url: str, what: str) -> None:
    env = {**os.environ, **libpq_environment(url)}
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise BackupError(f"{args[0]} is not installed (Debian: apt-get install postgresql-client)") from exc
    except subprocess.TimeoutExpired as exc:
        raise BackupError(f"{what} did not finish within {TOOL_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        raise BackupError(f"{what} failed: {done.stderr.strip()[-ERROR_TAIL_CHARS:]}")


def dump_database(url: str, target: Path) -> None:
    """Write a consistent copy of ``url``'s database to ``target`` (pg_dump custom format, or a SQLite file)."""
    if database_kind(url) is DatabaseKind.POSTGRESQL:
        _run(["pg_dump", "--format=custom", f"--file={target}"], url=url, what="pg_dump")
        return
    source_path = sqlite_path(url)
    if not source_path.is_file():
        raise BackupError(f"the SQLite database {source_path} does not exist")
    source = sqlite3.connect(source_path)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()


def restore_database(url: str, dump: Path, *, replace_schema: bool) -> None:
    """Load ``dump`` into ``url``'s database. ``replace_schema`` drops the objects the dump creates first (needed
    when the schema, or data, already exists). The caller has checked that this is wanted."""
    if database_kind(url) is DatabaseKind.POSTGRESQL:
        database = make_url(url).database or ""
        args = ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
        if replace_schema:
            args += ["--clean", "--if-exists"]
        _run([*args, f"--dbname={database}", str(dump)], url=url, what="pg_restore")
        return
    target = sqlite_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.restore-{uuid.uuid4().hex}")
    try:
        _copy_file(dump, staging)
        # A write-ahead log left from the replaced database would be replayed into the restored one.
        for suffix in ("-wal", "-shm"):
            target.with_name(target.name + suffix).unlink(missing_ok=True)
        staging.replace(target)
    finally:
        staging.unlink(missing_ok=True)


def _copy_file(source: Path, target: Path) -> None:
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(COPY_CHUNK_BYTES):
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
