"""The dispatch benchmark's core at a tiny size: a real Celery dispatcher runs every batch through the local-worker
path against the bench's fake worker, and the database ends with every batch done and one result per asset."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.fixtures.services import OrchestratorEnv

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from dispatch import dispatch_stack, run_round  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("backend", ["local", "cloud"])
def test_dispatch_bench_runs_every_batch_once_through_the_real_dispatch_path(
    pg_redis_env: OrchestratorEnv, tmp_path: Path, backend: str
) -> None:
    with dispatch_stack(
        pg_redis_env.database_url, pg_redis_env.broker_url, tmp_path / "bench", backend=backend
    ) as stack:
        measured = run_round(
            stack, part="smoke", pool="threads", concurrency=2, batch_size=3, batches=3, warmup=0, gpu_img_s=300.0
        )

    assert measured.check.ok, measured.check
    assert measured.check.batches_done == 3
    assert measured.check.assets == measured.check.results == 9
    assert measured.extra["outcomes"] == ["done"]
    assert stack.worker.answered and len(stack.worker.answered) == 3, "each batch went to the fake worker once"
    assert 1 <= measured.worker_max_in_flight <= 2
