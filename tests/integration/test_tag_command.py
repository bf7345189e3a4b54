"""``gpu-worker tag`` as a real process on a copy of ../shared/media: XMP that exiftool reads back, a resumed run that
does no work, and a run killed mid-way that resumes where it stopped without redoing finished files.

Uses the tiny CLIP (so tags exist without real weights) and the real exiftool; skips without ../shared/media, and
without exiftool unless in CI (env CI set), where exiftool must be installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gpu_worker.tagging.layout import checkpoint_path, json_sidecar_path
from tests.fixtures.processes import ManagedProcess, wait_until

VOCABULARY = {"clip": {"vocabulary": {"people": ["one person", "two people", "a crowd"]}, "threshold": 0.0}}
EXPECTED_TAGS = sorted(["AI/People/one person", "AI/People/two people", "AI/People/a crowd"])
RUN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def exiftool() -> str:
    """The exiftool on PATH; its absence skips these tests on a workstation and fails them in CI."""
    found = shutil.which("exiftool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("exiftool is required in CI: apt-get install libimage-exiftool-perl")
        pytest.skip("exiftool is not installed (Debian: apt-get install libimage-exiftool-perl)")
    return found


@pytest.fixture
def env(tiny_clip_worker_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **tiny_clip_worker_env, "GPUW_DEVICE": "cpu", "GPUW_NSFW_MODEL": ""}


def gpu_worker(*args: str) -> list[str]:
    """The installed ``gpu-worker`` console script (the real entry point), or the module where it is not on disk."""
    script = Path(sys.executable).with_name("gpu-worker")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "gpu_worker.cli", *args]


def tag_args(folder: Path, report: Path, *extra: str) -> list[str]:
    return gpu_worker("tag", str(folder), "--options", json.dumps(VOCABULARY), "--report", str(report), *extra)


def tag(folder: Path, report: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        tag_args(folder, report, *extra), env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    return result


def state(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every visible file under ``folder`` (media and sidecars)."""
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def tags_list(exiftool: str, path: Path) -> list[str]:
    """What ``exiftool -XMP-digiKam:TagsList`` reads back."""
    read = subprocess.run(
        [exiftool, "-json", "-struct", "-XMP-digiKam:TagsList", str(path.absolute())],
        capture_output=True,
        check=True,
        timeout=30,
    )
    document = json.loads(read.stdout)[0]
    return sorted(document.get("TagsList", []))


@pytest.fixture
def library(shared_media: Path, tmp_path: Path) -> Path:
    """The shared photos, a corrupt JPEG, a name exiftool could take for an option, spaces and unicode."""
    folder = tmp_path / "library"
    (folder / "Ünïcode folder").mkdir(parents=True)
    for name in ("bus.jpg", "zidane.jpg", "grace_hopper.jpg"):
        shutil.copyfile(shared_media / name, folder / name)
    shutil.copyfile(shared_media / "zidane.jpg", folder / "-rf.jpg")
    shutil.copyfile(shared_media / "grace_hopper.jpg", folder / "Ünïcode folder" / "Grâce Hopper, 1906 é.jpg")
    (folder / "broken.jpg").write_bytes((shared_media / "bus.jpg").read_bytes()[:20_000])
    return folder


def test_tag_writes_xmp_exiftool_reads_back_and_a_resumed_run_does_no_work(
    library: Path, tmp_path: Path, env: dict[str, str], exiftool: str
) -> None:
    first = tag(library, tmp_path / "first.json", env, "--write", "xmp")

    assert (first["files"], first["tagged"], first["failed"]) == (6, 5, 1)
    (failed,) = [o for o in first["outcomes"] if o["status"] == "failed"]
    assert failed["file"] == "broken.jpg" and "truncated" in failed["message"]
    good = [library / o["file"] for o in first["outcomes"] if o["status"] == "tagged"]
    assert sorted(p.relative_to(library).as_posix() for p in good) == [
        "-rf.jpg",
        "bus.jpg",
        "grace_hopper.jpg",
        "zidane.jpg",
        "Ünïcode folder/Grâce Hopper, 1906 é.jpg",
    ]
    for path in good:
        assert tags_list(exiftool, path) == EXPECTED_TAGS
        assert json_sidecar_path(path).is_file()
        with Image.open(path) as image:
            image.load()
    assert not json_sidecar_path(library / "broken.jpg").exists()
    before = state(library)

    second = tag(library, tmp_path / "second.json", env, "--write", "xmp", "--resume")

    assert (second["analyzed"], second["tagged"], second["unchanged"], second["failed"]) == (0, 0, 5, 1)
    assert second["device"] is None  # no model was even loaded
    assert state(library) == before


def test_a_killed_run_resumes_where_it_stopped(
    shared_media: Path, tmp_path: Path, env: dict[str, str], exiftool: str
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(12):  # distinct files: each shared photo re-encoded at several qualities
        source = ("bus.jpg", "zidane.jpg", "grace_hopper.jpg")[index % 3]
        with Image.open(shared_media / source) as image:
            image.convert("RGB").save(folder / f"photo {index:02d}.jpg", "JPEG", quality=60 + 3 * index)
    process = ManagedProcess(
        tag_args(folder, tmp_path / "killed.json", "--batch-size", "1"), env=env, log_path=tmp_path / "killed.log"
    )
    try:
        wait_until(lambda: len(finished(folder)) >= 2, RUN_TIMEOUT_S, "two finished files")
        process.kill_group()  # SIGKILL to the CLI and its exiftool: no cleanup code runs
    finally:
        process.stop()
    done = finished(folder)
    at_kill = state(folder)
    for path in folder.glob("*.jpg"):  # whatever the moment of the kill, no original is damaged
        with Image.open(path) as image:
            image.load()

    resumed = tag(folder, tmp_path / "resumed.json", env, "--resume", "--batch-size", "4")

    assert 2 <= len(done) < 12, "the run finished before it could be killed; nothing was tested"
    assert resumed["unchanged"] == len(done)
    assert (resumed["tagged"], resumed["failed"]) == (12 - len(done), 0)
    unchanged = [o["file"] for o in resumed["outcomes"] if o["status"] == "unchanged"]
    assert sorted(unchanged) == sorted(done)
    after = state(folder)
    for name in done:  # finished files were neither analyzed nor written again
        assert after[name] == at_kill[name]
        assert after[f"{name}.ai.json"] == at_kill[f"{name}.ai.json"]
    for path in folder.glob("*.jpg"):
        assert tags_list(exiftool, path) == EXPECTED_TAGS
    assert not list(folder.glob(".aimeta-*"))


def finished(folder: Path) -> list[str]:
    """The files the checkpoint records as done (empty until the run has created it)."""
    database = checkpoint_path(folder)
    if not database.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
            return [row[0] for row in db.execute("SELECT path FROM files WHERE state = 'done'")]
    except sqlite3.OperationalError:  # created but not yet initialised by the run
        return []


def test_without_exiftool_nothing_runs_and_the_message_says_how_to_install_it(
    library: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    before = state(library)

    done = subprocess.run(
        tag_args(library, tmp_path / "report.json", "--exiftool", str(tmp_path / "missing-exiftool")),
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )

    assert done.returncode == 1
    assert "apt-get install libimage-exiftool-perl" in " ".join(done.stdout.split())
    assert state(library) == before
