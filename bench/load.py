"""The API and the pipeline under concurrent multi-tenant load, in production form on loopback.

Starts a fresh PostgreSQL database (TEST_PG_ADMIN_URL or the local server), a private redis-server, the API as
uvicorn with ``--api-workers`` processes and a Celery worker that analyzes on the CPU with the tiny CLIP (the copy
the test suite keeps in .pytest_cache, else trained offline here), all configured as deploy/compose.yaml configures
production. Then ``--tenants`` tenants each run one uploader (a job of ``--requests-per-job`` multi-file uploads of
``--files-per-request`` unique 64-pixel JPEGs, sealed, every ``--job-interval`` s) and ``--pollers`` pollers (job
status, job list, job assets, the gallery, one asset, search; ``--think`` s between requests) for ``--duration`` s,
and everything is drained.

Prints requests, req/s and p50/p95/p99/max latency per kind and overall; errors (5xx and connection errors),
throttled (429) and other unexpected statuses; files accepted; whether every accepted file ended analyzed exactly
once (database check); and the resident memory of the API and the Celery worker before, after and at peak.

    python bench/load.py --duration 180 --tenants 4 --json load.json
    python bench/load.py --duration 20 --tenants 2            # a quick look

Per-tenant rate limits, where configured, answer 429; the defaults of the load stay under generous limits, and
``--env NAME=VALUE`` (repeatable) passes settings such as higher limits to the API and the worker.
Prints figures only; nothing here is an assertion about time. Linux only (memory is read from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.loadgen.driver import LoadConfig  # noqa: E402
from bench.loadgen.measure import measure_load  # noqa: E402
from bench.loadgen.redis_server import private_redis  # noqa: E402
from bench.loadgen.report import summary_lines  # noqa: E402
from bench.loadgen.stack import StackConfig, make_tenants, running_stack  # noqa: E402
from bench.scratch_db import DEFAULT_ADMIN_URL, scratch_postgres  # noqa: E402
from orchestrator.db.migrate import upgrade  # noqa: E402
from orchestrator.db.session import reset_engines  # noqa: E402
from orchestrator.settings import get_settings  # noqa: E402
from tests.fixtures.pytest_fixtures import TINY_CLIP_MANIFEST, TINY_CLIP_VERSION  # noqa: E402
from tests.fixtures.tiny_models import TINY_CLIP_ID, build_tiny_clip, catalog_toml_for, sha256_file  # noqa: E402


def _pytest_cached_clip() -> tuple[Path, dict[str, str]] | None:
    """The tiny CLIP the test suite trained and kept in pytest's cache (tests/fixtures/pytest_fixtures.py), when a
    complete copy is there: training it again takes minutes on a busy 2-core machine."""
    for folder in sorted((REPO / ".pytest_cache" / "d").glob(f"{TINY_CLIP_VERSION}-open_clip-*")):
        try:
            files: dict[str, str] = json.loads((folder / TINY_CLIP_MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if all((folder / name).is_file() and sha256_file(folder / name) == digest for name, digest in files.items()):
            return folder, files
    return None


def tiny_clip_env(folder: Path) -> dict[str, str]:
    """The worker env vars that load the tiny CLIP through the model store: the test suite's cached copy, else one
    trained into ``folder`` now."""
    cached = _pytest_cached_clip()
    if cached is not None:
        model_dir, files = cached
        print(f"using the tiny CLIP cached in {model_dir}", flush=True)
    else:
        print("training the tiny CLIP ...", flush=True)
        model_dir = folder / "tiny-clip"
        files = build_tiny_clip(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    catalog = folder / "models.toml"
    catalog.write_text(catalog_toml_for(TINY_CLIP_ID, model_dir, files), encoding="utf-8")
    return {
        "GPUW_CATALOG_PATHS": json.dumps([str(catalog)]),
        "GPUW_CLIP_MODEL": TINY_CLIP_ID,
        "GPUW_MODELS_DIR": str(folder / "worker-models"),
        "GPUW_DEVICE": "cpu",
    }


def configure_this_process(database_url: str, broker_url: str, data_dir: Path) -> None:
    """Point this process's orchestrator (migrations, tenants, the analysis check) at the stack's database."""
    os.environ.update(
        {
            "ORCH_ENVIRONMENT": "test",
            "ORCH_DATABASE_URL": database_url,
            "ORCH_BROKER_URL": broker_url,
            "ORCH_DATA_DIR": str(data_dir),
        }
    )
    get_settings.cache_clear()
    reset_engines()
    upgrade(database_url)


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--env takes NAME=VALUE, not {pair!r}")
        env[name] = value
    return env


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--pollers", type=int, default=2, help="polling clients per tenant")
    parser.add_argument("--files-per-request", type=int, default=4)
    parser.add_argument("--requests-per-job", type=int, default=2)
    parser.add_argument("--job-interval", type=float, default=2.0, help="seconds each uploader waits between jobs")
    parser.add_argument("--think", type=float, default=0.05, help="seconds a poller waits between requests")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes (compose: 2)")
    parser.add_argument("--celery-concurrency", type=int, default=2)
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for the analysis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra env for the stack")
    parser.add_argument("--pg-admin-url", default=DEFAULT_ADMIN_URL)
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args()
    config = LoadConfig(
        duration_s=args.duration,
        pollers_per_tenant=args.pollers,
        files_per_request=args.files_per_request,
        requests_per_job=args.requests_per_job,
        job_interval_s=args.job_interval,
        think_s=args.think,
        seed=args.seed,
    )

    with tempfile.TemporaryDirectory(prefix="mam-load-") as tmp:
        folder = Path(tmp)
        worker_env = tiny_clip_env(folder / "models")
        with private_redis(folder) as broker_url, scratch_postgres(args.pg_admin_url) as database_url:
            data_dir = folder / "data"
            configure_this_process(database_url, broker_url, data_dir)
            tenants = make_tenants(args.tenants)
            stack_config = StackConfig(
                database_url=database_url,
                broker_url=broker_url,
                data_dir=data_dir,
                worker_env=worker_env,
                api_workers=args.api_workers,
                celery_concurrency=args.celery_concurrency,
                extra_env=_env_pairs(args.env),
            )
            with running_stack(stack_config) as stack:
                print(f"stack up at {stack.url}; {args.duration:.0f} s of load ...", flush=True)
                data = measure_load(
                    stack,
                    tenants,
                    config,
                    drain_timeout_s=args.drain_timeout,
                    api_workers=args.api_workers,
                    celery_concurrency=args.celery_concurrency,
                )
            reset_engines()
    print("\n".join(summary_lines(data)))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2), encoding="utf-8")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
