"""``orchestrator up``: the whole system on one machine with nothing to install.

SQLite for the database, an embedded queue (Celery's SQLAlchemy transport on a SQLite file), a Celery worker with a
thread pool (works on Windows too) running the in-process backend, beat for the reaper, and the API in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from orchestrator.child_processes import stop_children
from orchestrator.security import generate_token

FIRST_KEY_FILE = "first-api-key.txt"
ADMIN_TOKEN_FILE = "admin-token.txt"  # noqa: S105 - a file name, not a secret
SECRET_KEY_FILE = "secret-key.txt"  # noqa: S105 - a file name; the key signs media URLs for workers
DEFAULT_TENANT = "default"

console = Console()


def _write_secret(path: Path, value: str) -> None:
    path.write_text(value + "\n", encoding="utf-8")
    if os.name != "nt":
        path.chmod(0o600)


def prepare_embedded(data_dir: Path) -> tuple[str, str]:
    """Create the data folder, migrate the database, and make sure an admin token and a first tenant key exist.

    Returns (admin token, first API key). Safe to run again: existing secrets are reused.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["ORCH_DATA_DIR"] = str(data_dir)
    for file_name, variable in ((ADMIN_TOKEN_FILE, "ORCH_ADMIN_TOKEN"), (SECRET_KEY_FILE, "ORCH_SECRET_KEY")):
        secret_file = data_dir / file_name
        if not secret_file.exists():
            _write_secret(secret_file, generate_token())
        os.environ.setdefault(variable, secret_file.read_text(encoding="utf-8").strip())

    from orchestrator.settings import get_settings

    get_settings.cache_clear()
    from orchestrator.db.migrate import upgrade
    from orchestrator.db.session import reset_engines, session_scope
    from orchestrator.tenants import create_tenant, get_tenant_by_name, issue_api_key

    reset_engines()
    upgrade()
    key_file = data_dir / FIRST_KEY_FILE
    if not key_file.exists():
        with session_scope() as session:
            tenant = get_tenant_by_name(session, name=DEFAULT_TENANT) or create_tenant(session, name=DEFAULT_TENANT)
            _, plaintext = issue_api_key(session, tenant_id=tenant.id, name="first key")
        _write_secret(key_file, plaintext)
    return os.environ["ORCH_ADMIN_TOKEN"], key_file.read_text(encoding="utf-8").strip()


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "orchestrator.tasks.app:celery_app", *args]


def start_background_processes(data_dir: Path, *, concurrency: int = 2) -> list[subprocess.Popen[bytes]]:
    """Start the Celery worker (thread pool, all queues) and beat as child processes."""
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "ORCH_DATA_DIR": str(data_dir)}
    worker = subprocess.Popen(
        _celery(
            "worker",
            "--loglevel=INFO",
            "--pool=threads",
            f"--concurrency={concurrency}",
            "--queues=ingest,analyze,maintenance",
            "--hostname=embedded@%h",
        ),
        env=env,
        stdout=(logs / "worker.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    beat = subprocess.Popen(
        _celery("beat", "--loglevel=INFO", f"--schedule={data_dir / 'beat-schedule'}"),
        env=env,
        stdout=(logs / "beat.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    return [worker, beat]


def run_up(host: str = "127.0.0.1", port: int = 8000, data_dir: Path | None = None) -> None:
    """Run everything until interrupted; prints the URL and the first API key."""
    data_dir = (data_dir or Path.cwd() / "data").resolve()
    os.environ["ORCH_API_HOST"], os.environ["ORCH_API_PORT"] = host, str(port)
    _, api_key = prepare_embedded(data_dir)
    children = start_background_processes(data_dir)
    url = f"http://{host}:{port}"
    console.print(f"[bold green]AI Media Analysis[/] is running at [bold]{url}[/]  (API docs: {url}/docs)")
    console.print(f"API key (tenant '{DEFAULT_TENANT}'): [bold]{api_key}[/]  (also in {data_dir / FIRST_KEY_FILE})")
    console.print(f"Data: {data_dir}   Logs: {data_dir / 'logs'}")
    console.print(f"Dashboard: open {url} and sign in with that API key, or create a user with a password:")
    console.print(f"  orchestrator users add YOUR-NAME --tenant {DEFAULT_TENANT}")
    console.print("Submit files with:  orchestrator submit ./photos --wait")
    console_interrupted = False
    try:
        import uvicorn

        from orchestrator.api.main import create_app

        # Behind a reverse proxy the forwarded scheme makes the dashboard's cookie Secure (uvicorn trusts
        # X-Forwarded-* from loopback only by default).
        uvicorn.run(create_app(), host=host, port=port, log_level="warning", proxy_headers=True)
        console_interrupted = True  # uvicorn returns after Ctrl+C, which a Windows console gave the children too
    except KeyboardInterrupt:
        console_interrupted = True
        raise
    finally:
        stop_children(children, console_interrupted=console_interrupted)
