"""A short run of the load benchmark (bench/load.py) as a correctness check: several tenants upload and poll at
once against the API as uvicorn worker processes on PostgreSQL and Redis, with a real Celery worker analyzing on the
CPU. No request may fail, every accepted file must end analyzed exactly once, and the API's memory must not run away.
Latencies are printed, never asserted (bench/load.py measures them at length; figures in docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.loadgen.driver import LoadConfig
from bench.loadgen.measure import measure_load
from bench.loadgen.report import summary_lines
from bench.loadgen.stack import StackConfig, make_tenants, running_stack
from tests.fixtures.services import OrchestratorEnv

pytestmark = pytest.mark.integration

TENANTS = 3
LOAD_S = 15.0
DRAIN_TIMEOUT_S = 120.0
# Generous on purpose: warming caches and connection pools grows the API by about 25 MiB; this catches only a gross
# leak, and the benchmark's longer run shows the slope.
MAX_API_RSS_GROWTH_MIB = 200.0


def test_concurrent_tenants_get_no_errors_and_every_uploaded_file_is_analyzed_once(
    pg_redis_env: OrchestratorEnv, tiny_clip_worker_env: dict[str, str], tmp_path: Path
) -> None:
    tenants = make_tenants(TENANTS)
    config = StackConfig(
        database_url=pg_redis_env.database_url,
        broker_url=pg_redis_env.broker_url,
        data_dir=pg_redis_env.data_dir,
        worker_env={**tiny_clip_worker_env, "GPUW_DEVICE": "cpu"},
        api_workers=2,
        celery_concurrency=1,
    )
    load = LoadConfig(
        duration_s=LOAD_S, pollers_per_tenant=1, files_per_request=3, requests_per_job=2, job_interval_s=4.0
    )
    with running_stack(config) as stack:
        data = measure_load(
            stack,
            tenants,
            load,
            drain_timeout_s=DRAIN_TIMEOUT_S,
            api_workers=config.api_workers,
            celery_concurrency=config.celery_concurrency,
        )
        logs = stack.log_tails()
    print("\n".join(summary_lines(data)))

    overall, analysis = data["overall"], data["analysis"]
    assert overall["requests"] > 0
    assert overall["errors"] == 0, (data["first_problems"], logs)
    assert overall["unexpected"] == 0, data["first_problems"]
    assert analysis["accepted"] > 0
    assert analysis["all_analyzed_once"], (analysis, logs)
    assert analysis["batches_claimed_more_than_once"] == 0, analysis
    assert data["memory_mib"]["api"]["growth_mib"] < MAX_API_RSS_GROWTH_MIB, data["memory_mib"]
