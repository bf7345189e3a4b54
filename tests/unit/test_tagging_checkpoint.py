"""The tagging checkpoint: per-file state keyed by content, analyses kept until written, leftovers, one run at a
time."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from gpu_worker.contract import AnalyzerOutput, ItemError, ItemResult, TagScore
from gpu_worker.tagging.checkpoint import Checkpoint, FileState, StoredAnalysis
from gpu_worker.tagging.errors import TaggingSetupError
from gpu_worker.tagging.layout import checkpoint_path

KEY = "analysis-key"


def analysis(asset: str = "a" * 64) -> StoredAnalysis:
    output = AnalyzerOutput(model_id="tiny", tags=[TagScore(tag="scene/beach", score=0.8)], embedding=[0.6, 0.8])
    return StoredAnalysis(ItemResult(asset_id=asset, outputs={"clip": output}), "cpu", "2026-01-01T00:00:00+00:00")


def test_records_and_analyses_survive_a_restart(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as checkpoint:
        checkpoint.save_analysis("a" * 64, KEY, analysis())
        checkpoint.mark("x/p.jpg", FileState.WRITING, source_sha256="a" * 64, final_sha256="b" * 64, run_key="r")

    with Checkpoint(tmp_path) as checkpoint:
        record = checkpoint.file("x/p.jpg")
        stored = checkpoint.analysis("a" * 64, KEY)

    assert record is not None
    assert (record.state, record.source_sha256, record.final_sha256, record.run_key) == (
        FileState.WRITING,
        "a" * 64,
        "b" * 64,
        "r",
    )
    assert stored == analysis()
    assert checkpoint_path(tmp_path).is_file()


def test_marking_a_file_done_drops_the_analysis_it_no_longer_needs(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as checkpoint:
        checkpoint.save_analysis("a" * 64, KEY, analysis())
        checkpoint.mark(
            "p.jpg", FileState.FAILED, source_sha256="a" * 64, final_sha256="a" * 64, run_key="r", error="x"
        )
        assert checkpoint.analysis("a" * 64, KEY) is not None

        checkpoint.mark("p.jpg", FileState.DONE, source_sha256="a" * 64, final_sha256="c" * 64, run_key="r")

        assert checkpoint.analysis("a" * 64, KEY) is None
        assert checkpoint.counts() == {FileState.DONE: 1}


def test_a_decode_failure_round_trips_with_its_error(tmp_path: Path) -> None:
    failed = StoredAnalysis(
        ItemResult(asset_id="d" * 64, errors={"clip": ItemError(code="truncated", message="cut off")}), "cpu", "t"
    )
    with Checkpoint(tmp_path) as checkpoint:
        checkpoint.save_analysis("d" * 64, KEY, failed)
        assert checkpoint.analysis("d" * 64, KEY) == failed
        assert checkpoint.analysis("d" * 64, "other-settings") is None


def test_reset_forgets_files_and_analyses(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as checkpoint:
        checkpoint.save_analysis("a" * 64, KEY, analysis())
        checkpoint.mark("p.jpg", FileState.DONE, source_sha256="e" * 64, final_sha256="e" * 64, run_key="r")
        checkpoint.reset()

        assert checkpoint.file("p.jpg") is None
        assert checkpoint.analysis("a" * 64, KEY) is None


def test_only_one_run_at_a_time_may_hold_a_folder(tmp_path: Path) -> None:
    with Checkpoint(tmp_path), pytest.raises(TaggingSetupError, match="another `gpu-worker tag` run"):
        Checkpoint(tmp_path)
    with Checkpoint(tmp_path) as again:
        assert again.counts() == {}


def test_temporary_files_of_a_crashed_run_are_removed_on_the_next_start(tmp_path: Path) -> None:
    temp = tmp_path / "sub" / ".aimeta-0123.jpg"
    temp.parent.mkdir()
    with Checkpoint(tmp_path) as checkpoint:
        checkpoint.add_pending(temp)
        temp.write_bytes(b"half a copy")
        temp.with_name(temp.name + "_exiftool_tmp").write_bytes(b"half of exiftool's copy")
        finished = tmp_path / ".aimeta-4567.json"
        checkpoint.add_pending(finished)
        checkpoint.remove_pending(finished)

    with Checkpoint(tmp_path) as checkpoint:
        removed = checkpoint.remove_leftovers()
        assert checkpoint.remove_leftovers() == []

    assert sorted(p.name for p in removed) == [".aimeta-0123.jpg", ".aimeta-0123.jpg_exiftool_tmp"]
    assert list((tmp_path / "sub").iterdir()) == []


def test_records_of_another_schema_version_are_discarded(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as checkpoint:
        checkpoint.mark("p.jpg", FileState.DONE, source_sha256="e" * 64, final_sha256="e" * 64, run_key="r")
    with closing(sqlite3.connect(checkpoint_path(tmp_path))) as db, db:
        db.execute("UPDATE meta SET value = '0' WHERE key = 'schema'")

    with Checkpoint(tmp_path) as checkpoint:
        assert checkpoint.file("p.jpg") is None
