"""The API server's memory stays bounded under hostile uploads: a real uvicorn process on SQLite (the embedded
default) receives the 10^10-pixel PNG, a stream far over the upload limit, and a batch of the whole corpus, while
the kernel's high-water mark of its resident memory (VmHWM) is read. The figures are printed (run with ``-s``)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.abuse.corpus import Body, giant_ihdr_png, hostile_files, multipart_stream, stream_of
from tests.abuse.memory import Memory, memory_of
from tests.fixtures.deployment import free_port
from tests.fixtures.factories import TenantWithKey, jpeg_bytes, make_tenant
from tests.fixtures.processes import ManagedProcess, wait_until
from tests.fixtures.services import OrchestratorEnv

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("orch_env", ["sqlite"], indirect=True)]

LIMIT_BYTES = 1024 * 1024
OVERSIZED_BYTES = 64 * 1024 * 1024
# Generous: the server may cache and fragment, but a decoded bomb (1.25 GB) or a buffered stream (64 MB and up)
# would show.
ALLOWED_GROWTH_BYTES = 300 * 1000 * 1000


@pytest.fixture
def server(orch_env: OrchestratorEnv, tmp_path: Path) -> Iterator[tuple[str, ManagedProcess]]:
    """uvicorn serving the orchestrator API on the test's SQLite database, with a 1 MiB upload limit."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "GPUW_"))},
        **orch_env.environ(),
        "ORCH_MAX_UPLOAD_BYTES": str(LIMIT_BYTES),
    }
    args = [sys.executable, "-m", "uvicorn", "orchestrator.api.main:create_app", "--factory"]
    process = ManagedProcess([*args, "--port", str(port), "--log-level", "warning"], env, tmp_path / "api.log")
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.popen.poll() is not None:
            raise RuntimeError(f"uvicorn exited:\n{process.log()[-3000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, 60, "the API to answer /healthz", interval_s=0.2)
        yield url, process
    finally:
        process.stop()


def _upload(client: httpx.Client, job_id: str, parts: list[tuple[bytes, Body]]) -> httpx.Response:
    boundary = uuid.uuid4().hex
    return client.post(
        f"/api/v1/jobs/{job_id}/files",
        content=multipart_stream(parts, boundary),  # a generator: sent chunked, never built in memory
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=120,
    )


def test_the_api_process_memory_stays_bounded_under_bombs_oversized_streams_and_the_corpus(
    server: tuple[str, ManagedProcess],
) -> None:
    url, process = server
    tenant: TenantWithKey = make_tenant()
    figures: dict[str, Memory] = {}
    with httpx.Client(base_url=url, headers=tenant.headers) as client:
        job_id = client.post("/api/v1/jobs", json={"name": "memory"}).json()["id"]
        warm = _upload(client, job_id, [(b"warm-up.jpg", jpeg_bytes())])
        assert warm.status_code == 201, warm.text
        figures["baseline"] = memory_of(process.popen.pid)

        bomb = _upload(client, job_id, [(b"bomb.png", giant_ihdr_png())])
        figures["after the 10^10-pixel PNG"] = memory_of(process.popen.pid)
        oversized = _upload(client, job_id, [(b"huge.jpg", stream_of(OVERSIZED_BYTES))])
        figures[f"after a {OVERSIZED_BYTES >> 20} MiB stream"] = memory_of(process.popen.pid)
        corpus = _upload(client, job_id, [(h.name, h.data) for h in hostile_files(limit_bytes=LIMIT_BYTES)])
        figures["after the corpus batch"] = memory_of(process.popen.pid)

    assert (bomb.status_code, bomb.json()["files"][0]["code"]) == (422, "decompression_bomb")
    assert (oversized.status_code, oversized.json()["files"][0]["code"]) == (413, "file_too_large")
    assert oversized.json()["files"][0]["size"] == OVERSIZED_BYTES
    assert corpus.status_code == 207, corpus.text
    baseline = figures["baseline"]
    for stage, memory in figures.items():
        print(f"api rss {stage}: VmRSS {memory.rss_mb:.1f} MB, VmHWM {memory.peak_mb:.1f} MB")
    peak = max(m.peak_bytes for m in figures.values())
    print(f"api peak growth over baseline RSS: {(peak - baseline.rss_bytes) / 1e6:.1f} MB")
    assert peak - baseline.rss_bytes < ALLOWED_GROWTH_BYTES, {k: v.peak_mb for k, v in figures.items()}
