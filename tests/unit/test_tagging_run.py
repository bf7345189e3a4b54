"""Tagging a folder in-process with the tiny CLIP: resumable by content, interruptible, one bad file never fatal.

Needs exiftool for the XMP cases (see test_tagging_xmp.py); ``--write none`` cases run without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_worker.executor import InProcessExecutor
from gpu_worker.settings import WorkerSettings
from gpu_worker.tagging.checkpoint import Checkpoint, FileState
from gpu_worker.tagging.errors import ExifToolMissingError, TaggingSetupError
from gpu_worker.tagging.exiftool import ExifTool, find_exiftool
from gpu_worker.tagging.keywords import XmpField
from gpu_worker.tagging.layout import WriteTarget, json_sidecar_path, xmp_sidecar_path
from gpu_worker.tagging.run import FileOutcome, FileStatus, TagOptions, TagSummary, tag_folder
from tests.fixtures.factories import truncated_jpeg
from tests.fixtures.tiny_models import TINY_CLIP_ID, draw_shape

SHAPES = {"clip": {"vocabulary": {"shape": ["red square", "blue circle"]}, "threshold": 0.0}}
SHAPE_KEYWORDS = ["AI/Shape/blue circle", "AI/Shape/red square"]


class StopRequestedError(Exception):
    """Raised by a test's observer to stop a run at a chosen file, as Ctrl-C would."""


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory, tiny_clip_catalog: Path) -> InProcessExecutor:
    settings = WorkerSettings(
        models_dir=tmp_path_factory.mktemp("models"),
        catalog_paths=[tiny_clip_catalog],
        clip_model=TINY_CLIP_ID,
        nsfw_model="",
        device="cpu",
    )
    return InProcessExecutor(settings)


@pytest.fixture(scope="module")
def exiftool_path() -> Path:
    """The exiftool on PATH; its absence skips the XMP tests on a workstation and fails them in CI."""
    if shutil.which("exiftool") is None:
        if os.environ.get("CI"):
            pytest.fail("exiftool is required in CI: apt-get install libimage-exiftool-perl")
        pytest.skip("exiftool is not installed (Debian: apt-get install libimage-exiftool-perl)")
    return find_exiftool()


@pytest.fixture
def exiftool(exiftool_path: Path) -> Iterator[ExifTool]:
    with ExifTool(exiftool_path) as tool:
        yield tool


def photos(folder: Path, count: int) -> list[Path]:
    """``count`` different small JPEGs of coloured shapes, some in a subfolder."""
    rng = random.Random(7)
    paths = []
    for index in range(count):
        colour, shape = [("red", "square"), ("blue", "circle")][index % 2]
        path = folder / ("sub" if index % 3 == 2 else "") / f"shape {index}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_shape(colour, shape, size=96, rng=rng).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def state(paths: list[Path]) -> dict[Path, tuple[str, int]]:
    """Each file's sha256 and modification time."""
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}


def clip_images_seen(executor: InProcessExecutor) -> int:
    return executor.analyzer("clip", TINY_CLIP_ID).stats.images


def run(folder: Path, executor: InProcessExecutor, **options: object) -> TagSummary:
    chosen = {"analyzer_options": SHAPES, **options}
    return tag_folder(folder, TagOptions(**chosen), executor)  # type: ignore[arg-type]


def test_an_interrupted_run_resumes_without_redoing_finished_files(
    tmp_path: Path, executor: InProcessExecutor, exiftool: ExifTool
) -> None:
    paths = photos(tmp_path, 6)
    seen_before = clip_images_seen(executor)
    finished: list[FileOutcome] = []

    def stop_after_two(outcome: FileOutcome) -> None:
        finished.append(outcome)
        if len(finished) == 2:
            raise StopRequestedError

    with pytest.raises(StopRequestedError):
        tag_folder(tmp_path, TagOptions(analyzer_options=SHAPES, batch_size=1), executor, on_file=stop_after_two)
    with Checkpoint(tmp_path) as checkpoint:
        done = checkpoint.counts().get(FileState.DONE, 0)
    done_paths = [tmp_path / o.relative for o in finished]
    after_interrupt = state(done_paths)

    summary = run(tmp_path, executor, resume=True, batch_size=1)

    assert 2 <= done < 6
    assert (summary.files, summary.unchanged, summary.tagged, summary.failed) == (6, done, 6 - done, 0)
    assert state(done_paths) == after_interrupt  # finished files were not written again
    # Every image went through the model exactly once over both runs, interrupted or not.
    assert clip_images_seen(executor) - seen_before == 6
    for path in paths:
        assert sorted(exiftool.read_keywords(path)[XmpField.TAGS_LIST]) == SHAPE_KEYWORDS
        assert json_sidecar_path(path).is_file()
    assert not list(tmp_path.rglob(".aimeta-*"))


def test_a_second_resumed_run_does_no_work_and_an_edited_file_is_redone(
    tmp_path: Path, executor: InProcessExecutor, exiftool: ExifTool
) -> None:
    paths = photos(tmp_path, 3)
    (tmp_path / "broken.jpg").write_bytes(truncated_jpeg())
    first = run(tmp_path, executor)
    tagged = state(paths)
    seen = clip_images_seen(executor)

    again = run(tmp_path, executor, resume=True)

    assert (first.files, first.tagged, first.failed) == (4, 3, 1)
    assert (again.analyzed, again.tagged, again.unchanged, again.failed) == (0, 0, 3, 1)
    (failed,) = [o for o in again.outcomes if o.status is FileStatus.FAILED]
    assert failed.relative == "broken.jpg"
    assert "truncated" in (failed.message or "")
    assert state(paths) == tagged
    assert clip_images_seen(executor) == seen

    draw_shape("blue", "circle", size=80).save(paths[0], "JPEG")  # the user replaced one picture
    third = run(tmp_path, executor, resume=True)

    assert (third.analyzed, third.tagged, third.unchanged) == (1, 1, 2)
    assert [o.relative for o in third.outcomes if o.status is FileStatus.TAGGED] == [paths[0].name]


def test_without_resume_every_file_is_analyzed_again(
    tmp_path: Path, executor: InProcessExecutor, exiftool: ExifTool
) -> None:
    photos(tmp_path, 2)
    run(tmp_path, executor)

    again = run(tmp_path, executor)

    assert (again.analyzed, again.tagged, again.unchanged) == (2, 2, 0)


def test_identical_files_are_analyzed_once(tmp_path: Path, executor: InProcessExecutor) -> None:
    (first,) = photos(tmp_path, 1)
    shutil.copyfile(first, tmp_path / "copy.jpg")
    seen = clip_images_seen(executor)

    summary = run(tmp_path, executor, write=WriteTarget.NONE)

    assert summary.tagged == 2
    assert clip_images_seen(executor) - seen == 1


def test_sidecar_mode_leaves_originals_identical(
    tmp_path: Path, executor: InProcessExecutor, exiftool: ExifTool
) -> None:
    paths = photos(tmp_path, 2)
    before = state(paths)

    summary = run(tmp_path, executor, write=WriteTarget.SIDECAR)

    assert summary.tagged == 2
    assert state(paths) == before
    for path in paths:
        assert sorted(exiftool.read_keywords(xmp_sidecar_path(path))[XmpField.TAGS_LIST]) == SHAPE_KEYWORDS
        document = json.loads(json_sidecar_path(path).read_text(encoding="utf-8"))
        assert document["written"]["target"] == "sidecar"
        assert document["written"]["keywords_in"] == xmp_sidecar_path(path).name
        assert document["file"]["sha256"] == document["file"]["file_sha256"] == before[path][0]


def test_the_json_sidecar_holds_every_result(tmp_path: Path, executor: InProcessExecutor) -> None:
    (path,) = photos(tmp_path, 1)
    before = state([path])

    run(tmp_path, executor, write=WriteTarget.NONE, exiftool="/nowhere/exiftool")

    document = json.loads(json_sidecar_path(path).read_text(encoding="utf-8"))
    clip = document["analyzers"]["clip"]
    assert (document["schema"], document["schema_version"]) == ("ai-media-analysis/sidecar", 2)
    assert document["file"]["name"] == path.name
    assert document["file"]["media_kind"] == "image"
    assert document["file"]["size_bytes"] == path.stat().st_size
    assert document["written"]["target"] == "none"
    assert {t["tag"] for t in clip["tags"]} == {"shape/red square", "shape/blue circle"}
    assert len(clip["embedding"]) == executor.analyzer("clip", TINY_CLIP_ID).embed_dim  # type: ignore[attr-defined]
    assert sorted(document["ai_keywords"][XmpField.TAGS_LIST.value]) == SHAPE_KEYWORDS
    assert state([path]) == before  # --write none never touches the file


def test_nothing_runs_without_exiftool_when_xmp_is_asked_for(tmp_path: Path, executor: InProcessExecutor) -> None:
    photos(tmp_path, 1)

    with pytest.raises(ExifToolMissingError, match="libimage-exiftool-perl"):
        run(tmp_path, executor, exiftool=str(tmp_path / "no-exiftool"))


def test_nothing_runs_without_a_known_analyzer(tmp_path: Path, executor: InProcessExecutor) -> None:
    photos(tmp_path, 1)

    with pytest.raises(TaggingSetupError, match="no analyzer can run"):
        run(tmp_path, executor, write=WriteTarget.NONE, analyzers=("no-such-analyzer",))
