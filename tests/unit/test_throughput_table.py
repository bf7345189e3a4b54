"""The images/s table the scheduler ranks with: measured samples from our workers replace the estimates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from orchestrator.cloud.readiness import MIN_RECENT_RUNS, measured_images_per_s
from orchestrator.scheduler.model import ThroughputTable
from orchestrator.scheduler.offers import load_throughput_table
from orchestrator.scheduler.throughput import ThroughputSample, current_table

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
MAX_AGE = timedelta(days=30)
ESTIMATES = ThroughputTable(images_per_s={"RTX 4090": 200.0, "RTX 5090": 260.0}, reference_gpu="RTX 4090")


def _sample(gpu_name: str, images_per_s: float, age: timedelta = timedelta(hours=1)) -> ThroughputSample:
    return ThroughputSample(gpu_name, images_per_s, NOW - age)


def test_without_samples_the_estimates_are_returned_untouched() -> None:
    table = current_table(ESTIMATES, [], now=NOW, max_age=MAX_AGE)

    assert table == ESTIMATES
    assert table.measured == frozenset()


def test_the_median_of_recent_samples_replaces_the_estimate_so_one_odd_run_does_not_move_it() -> None:
    samples = [_sample("RTX 5090", 310.0), _sample("RTX 5090", 12.0), _sample("RTX 5090", 300.0)]

    table = current_table(ESTIMATES, samples, now=NOW, max_age=MAX_AGE)

    assert table.images_per_s["RTX 5090"] == 300.0
    assert table.images_per_s["RTX 4090"] == 200.0
    assert table.measured == {"RTX 5090"}
    assert table.reference_gpu == "RTX 4090"


def test_an_even_number_of_samples_takes_the_middle_mean() -> None:
    table = current_table(ESTIMATES, [_sample("RTX 4090", 180.0), _sample("RTX 4090", 220.0)], now=NOW, max_age=MAX_AGE)

    assert table.images_per_s["RTX 4090"] == 200.0
    assert table.measured == {"RTX 4090"}


def test_samples_older_than_the_max_age_are_ignored() -> None:
    samples = [_sample("RTX 5090", 100.0, age=MAX_AGE + timedelta(seconds=1)), _sample("RTX 4090", 150.0, age=MAX_AGE)]

    table = current_table(ESTIMATES, samples, now=NOW, max_age=MAX_AGE)

    assert table.images_per_s["RTX 5090"] == 260.0
    assert table.images_per_s["RTX 4090"] == 150.0
    assert table.measured == {"RTX 4090"}


def test_gpu_models_only_measured_are_added_and_non_positive_samples_are_ignored() -> None:
    samples = [_sample("L40S", 170.0), _sample("RTX 4090", 0.0), ("RTX 5090", -3.0, NOW)]

    table = current_table(ESTIMATES, samples, now=NOW, max_age=MAX_AGE)

    assert table.images_per_s == {"RTX 4090": 200.0, "RTX 5090": 260.0, "L40S": 170.0}
    assert table.measured == {"L40S"}


def test_a_measured_reference_gpu_changes_every_speed() -> None:
    table = current_table(ESTIMATES, [_sample("RTX 4090", 130.0)], now=NOW, max_age=MAX_AGE)

    assert table.speed("RTX 5090") == 260.0 / 130.0


def test_a_table_file_marks_only_the_entries_whose_source_is_measured(tmp_path: Path) -> None:
    path = tmp_path / "gpu_throughput.toml"
    path.write_text(
        'reference_gpu = "RTX 4090"\n'
        '[gpus."RTX 4090"]\nimages_per_s = 200.0\nsource = "estimate"\n'
        '[gpus."RTX 5090"]\nimages_per_s = 275.5\nsource = "measured"\n',
        encoding="utf-8",
    )

    table = load_throughput_table(path)

    assert table.measured == {"RTX 5090"}
    assert table.images_per_s == {"RTX 4090": 200.0, "RTX 5090": 275.5}


def _info(
    *, device: str = "cuda:0", warmup: float | None = 150.0, recent: float | None = None, runs: int = 0
) -> dict[str, Any]:
    warm = {"items_per_s": warmup} if warmup is not None else {}
    return {"device": device, "throughput": {"warmup": warm, "recent_items_per_s": recent, "recent_runs": runs}}


def test_the_worker_figure_is_the_warm_up_until_enough_real_batches_ran() -> None:
    assert measured_images_per_s(_info()) == 150.0
    assert measured_images_per_s(_info(recent=240.0, runs=MIN_RECENT_RUNS - 1)) == 150.0
    assert measured_images_per_s(_info(recent=240.0, runs=MIN_RECENT_RUNS)) == 240.0


def test_a_worker_not_on_cuda_or_without_a_figure_reports_nothing_for_its_gpu() -> None:
    assert measured_images_per_s(_info(device="cpu")) is None
    assert measured_images_per_s(_info(warmup=None)) is None
    assert measured_images_per_s({"device": "cuda:0"}) is None
    assert measured_images_per_s({"throughput": {}}) is None
