"""The embedded default end to end: ``orchestrator up`` in a subprocess, then ``orchestrator submit --wait`` on the
real photos with a corrupt file among them, as a user types it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.fixtures.deployment import Deployment
from tests.fixtures.factories import truncated_jpeg

pytestmark = pytest.mark.e2e


@pytest.fixture
def photo_folder(shared_media: Path, tmp_path: Path) -> Path:
    """The shared photos in nested folders, with a corrupt JPEG and a note among them."""
    folder = tmp_path / "photos"
    (folder / "street").mkdir(parents=True)
    shutil.copy(shared_media / "bus.jpg", folder / "street" / "bus.jpg")
    shutil.copy(shared_media / "zidane.jpg", folder / "zidane.jpg")
    shutil.copy(shared_media / "grace_hopper.jpg", folder / "grace_hopper.jpg")
    (folder / "corrupt.jpg").write_bytes(truncated_jpeg())
    (folder / "notes.txt").write_text("not a photo\n")
    return folder


def test_up_then_submit_wait_tags_every_photo_and_rejects_the_corrupt_one(
    start_deployment: Callable[[dict[str, str]], Deployment], photo_folder: Path, tiny_clip_worker_env: dict[str, str]
) -> None:
    deployment = start_deployment(tiny_clip_worker_env)
    assert (deployment.workdir / "data" / "first-api-key.txt").exists()
    assert (deployment.workdir / "data" / "orchestrator.sqlite").exists()

    done = deployment.submit(photo_folder)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "notes.txt" in out, "the non-media file should be skipped with a reason"
    assert "corrupt.jpg" in out and "truncated" in out, out

    headers = {"Authorization": f"Bearer {deployment.api_key}"}
    job = httpx.get(f"{deployment.url}/api/v1/jobs", headers=headers).json()["data"][0]
    assert job["status"] == "done"
    assert job["progress"] == {"total": 4, "uploaded": 0, "prepared": 0, "analyzing": 0, "done": 3, "failed": 1}
    assets = httpx.get(f"{deployment.url}/api/v1/jobs/{job['id']}/assets", headers=headers).json()["data"]
    for asset in assets:
        if asset["name"] == "corrupt.jpg":
            assert (asset["status"], asset["error_code"]) == ("failed", "truncated")
        else:
            assert asset["status"] == "done"
            assert asset["tags"], f"{asset['name']} has no tags"
            assert len(asset["results"]["clip"]["model_id"]) > 0
    assert not job["notices"]


def test_missing_clip_weights_finish_the_job_with_one_clear_line_on_how_to_add_them(
    start_deployment: Callable[[dict[str, str]], Deployment], photo_folder: Path, tmp_path: Path
) -> None:
    deployment = start_deployment({"GPUW_MODELS_DIR": str(tmp_path / "no-models")})
    done = deployment.submit(photo_folder)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "gpu-worker models fetch" in out, out
    assert "truncated" in out
    headers = {"Authorization": f"Bearer {deployment.api_key}"}
    job = httpx.get(f"{deployment.url}/api/v1/jobs", headers=headers).json()["data"][0]
    assert job["status"] == "done"
    assert job["progress"]["done"] == 3 and job["progress"]["failed"] == 1
    assert "clip" in job["notices"]
