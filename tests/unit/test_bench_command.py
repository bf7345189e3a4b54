"""`gpu-worker bench` measures this machine's throughput with the configured models."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gpu_worker.cli import app


def test_bench_prints_batched_and_sequential_images_per_second(tiny_clip_env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        app, ["bench", "--analyzers", "clip", "--images", "3", "--repeat", "1"], env={"COLUMNS": "160"}
    )

    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") == 5}
    assert set(rows) >= {"clip", "full pipeline"}, result.output
    batched, sequential, ratio = (float(cell) for cell in rows["clip"].split("│")[2:5])
    assert batched > 0 and sequential > 0
    assert ratio == pytest.approx(batched / sequential, rel=0.05)


def test_bench_with_missing_weights_fails_with_the_reason(tiny_clip_env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        app, ["bench", "--analyzers", "objects", "--images", "2"], env={"GPUW_OBJECTS_MODEL": "yolo11n"}
    )
    assert result.exit_code == 1
    assert "yolo11n" in result.output
