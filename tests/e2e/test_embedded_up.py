"""The embedded default end to end: ``orchestrator up`` in a subprocess, then ``orchestrator submit --wait`` on the
real photos with a corrupt file among them, as a user types it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fixtures.factories import truncated_jpeg
from tests.fixtures.processes import ManagedProcess, wait_until

pytestmark = pytest.mark.e2e

ORCHESTRATOR = [sys.executable, "-m", "orchestrator.cli"]


@dataclass
class Deployment:
    """A running ``orchestrator up`` and the environment a user's shell next to it would have."""

    url: str
    workdir: Path
    env: dict[str, str]

    def submit(self, *paths: Path) -> subprocess.CompletedProcess[str]:
        """``orchestrator submit PATHS --wait`` from the deployment's folder."""
        return subprocess.run(
            [*ORCHESTRATOR, "submit", *map(str, paths), "--wait", "--timeout", "240"],
            env={**self.env, "ORCH_API_URL": self.url, "COLUMNS": "200"},
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def start_deployment(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Deployment]]:
    """Start ``orchestrator up`` in a fresh folder with extra env vars; stops it (printing its logs) afterwards."""
    running: list[tuple[ManagedProcess, Path]] = []

    def start(extra_env: dict[str, str]) -> Deployment:
        workdir = tmp_path / f"deployment{len(running)}"
        workdir.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "GPUW_"))}
        env.update(extra_env)
        port = _free_port()
        up = ManagedProcess([*ORCHESTRATOR, "up", "--port", str(port)], env, workdir / "up.log", cwd=workdir)
        running.append((up, workdir))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(url), 90, "orchestrator up to answer /healthz", interval_s=0.5)
        return Deployment(url=url, workdir=workdir, env=env)

    yield start
    for up, workdir in running:
        up.stop()
        print(f"--- up.log ---\n{up.log()[-3000:]}")
        for log in (workdir / "data" / "logs").glob("*.log"):
            print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}")


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

    key = (deployment.workdir / "data" / "first-api-key.txt").read_text().strip()
    headers = {"Authorization": f"Bearer {key}"}
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
    key = (deployment.workdir / "data" / "first-api-key.txt").read_text().strip()
    job = httpx.get(f"{deployment.url}/api/v1/jobs", headers={"Authorization": f"Bearer {key}"}).json()["data"][0]
    assert job["status"] == "done"
    assert job["progress"]["done"] == 3 and job["progress"]["failed"] == 1
    assert "clip" in job["notices"]
