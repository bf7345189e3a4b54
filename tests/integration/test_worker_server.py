"""``gpu-worker serve`` as a real process with the tiny CLIP: health after warm-up, the bearer token, JSON manifests
with URLs and multipart uploads, refused requests, and concurrent requests merged into shared executor runs with
each request getting exactly its own items back."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from gpu_worker.batcher import DynamicBatcher
from gpu_worker.cli import app as cli_app
from gpu_worker.contract import BatchManifest, BatchResult, ItemError, ItemResult, ManifestItem, MediaKind
from gpu_worker.server import create_app
from gpu_worker.settings import WorkerSettings
from tests.fixtures.processes import ManagedProcess, wait_until
from tests.fixtures.tiny_models import TINY_CLIP_ID, draw_shape, serve_folder

TOKEN = "test-worker-token-2f9c81d0"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHAPES = {"clip": {"vocabulary": {"shape": ["red square", "blue circle"]}, "threshold": 0.0, "nsfw": False}}
MAX_ITEM_BYTES = 1_000_000
# Long enough that requests sent together from threads land in one run, even on a busy 2-core machine.
MAX_WAIT_MS = 500


@dataclass
class Worker:
    """A running ``gpu-worker serve`` process."""

    url: str
    process: ManagedProcess

    def info(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/v1/info", headers=AUTH, timeout=10)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def worker(tiny_clip_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One worker process for the module, serving the tiny CLIP on the CPU."""
    folder = tmp_path_factory.mktemp("worker")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUW_")}
    env.update(
        {
            "GPUW_CATALOG_PATHS": json.dumps([str(tiny_clip_catalog)]),
            "GPUW_CLIP_MODEL": TINY_CLIP_ID,
            "GPUW_MODELS_DIR": str(folder / "models"),
            "GPUW_DEVICE": "cpu",
            "GPUW_TOKEN": TOKEN,
            "GPUW_MAX_ITEM_BYTES": str(MAX_ITEM_BYTES),
            "GPUW_SERVE_MAX_WAIT_MS": str(MAX_WAIT_MS),
            "GPUW_SERVE_WARMUP_IMAGES": "2",
        }
    )
    process = ManagedProcess(
        [sys.executable, "-m", "gpu_worker.cli", "serve", "--port", str(port), "--analyzers", "clip"],
        env,
        folder / "worker.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url) or process.popen.poll() is not None, 120, "the worker to become ready", 0.3)
        assert process.popen.poll() is None, process.log()[-4000:]
        yield Worker(url, process)
    finally:
        process.stop()
        print(f"--- worker.log (tail) ---\n{process.log()[-3000:]}")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Shape pictures served over HTTP, as the orchestrator's signed URLs would be: (base URL, name -> bytes)."""
    folder = tmp_path_factory.mktemp("served-media")
    files = {
        "red.jpg": jpeg(draw_shape("red", "square", size=128)),
        "blue.jpg": jpeg(draw_shape("blue", "circle", size=128)),
    }
    files["truncated.jpg"] = files["red.jpg"][: len(files["red.jpg"]) // 2]
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with serve_folder(folder) as server:
        yield server.base_url, files


def top_shape(item: dict[str, Any]) -> str:
    tags = [t for t in item["outputs"]["clip"]["tags"] if t["tag"].startswith("shape/")]
    return str(max(tags, key=lambda t: t["score"])["tag"])


def url_manifest(base: str, batch_id: str, items: list[tuple[str, str]], **extra: Any) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "analyzers": ["clip"],
        "options": SHAPES,
        "items": [{"asset_id": a, "media_kind": "image", "url": f"{base}/{name}"} for a, name in items],
        **extra,
    }


def test_healthz_is_ready_after_warm_up_without_a_token_and_info_reports_the_worker(worker: Worker) -> None:
    health = httpx.get(f"{worker.url}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json()["status"] == "ready"
    assert health.json()["models"] == {"clip": TINY_CLIP_ID}
    assert health.json()["device"] == "cpu"

    info = worker.info()
    assert info["hardware"]["torch"]
    assert info["hardware"]["gpu"] is None  # the worker was told to use the CPU
    assert info["hardware"]["device_name"] == "cpu"
    assert info["models"]["clip"]["model_id"] == TINY_CLIP_ID
    assert info["models"]["clip"]["images"] >= 4, "two warm-up batches of two images ran through the analyzer"
    assert info["throughput"]["warmup"]["items"] == 2
    assert info["throughput"]["warmup"]["items_per_s"] > 0
    assert info["batching"]["queue_depth"] == {"requests": 0, "items": 0}
    assert info["batching"]["max_wait_ms"] == MAX_WAIT_MS


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_v1_routes_refuse_a_missing_or_wrong_token(worker: Worker, headers: dict[str, str]) -> None:
    info = httpx.get(f"{worker.url}/v1/info", headers=headers, timeout=5)
    analyze = httpx.post(f"{worker.url}/v1/analyze", json={"batch_id": "x", "items": []}, headers=headers, timeout=5)
    for answer in (info, analyze):
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["detail"]["code"] == "unauthorized"


def test_json_manifest_with_urls_is_analyzed_and_a_corrupt_item_fails_alone(
    worker: Worker, media: tuple[str, dict[str, bytes]]
) -> None:
    base, _ = media
    manifest = url_manifest(
        base,
        "json-batch",
        [("r", "red.jpg"), ("broken", "truncated.jpg"), ("b", "blue.jpg"), ("gone", "missing.jpg")],
    )
    answer = httpx.post(f"{worker.url}/v1/analyze", json=manifest, headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text
    result = BatchResult.model_validate(answer.json())
    assert result.batch_id == "json-batch"
    assert [i.asset_id for i in result.items] == ["r", "broken", "b", "gone"]
    by_id = {i.asset_id: i.model_dump() for i in result.items}
    assert top_shape(by_id["r"]) == "shape/red square"
    assert top_shape(by_id["b"]) == "shape/blue circle"
    assert len(by_id["r"]["outputs"]["clip"]["embedding"]) == 32
    assert by_id["broken"]["errors"]["clip"]["code"] == "truncated"
    assert by_id["gone"]["errors"]["clip"]["code"] == "download_failed"


def test_multipart_files_are_referenced_by_part_name_and_analyzed(
    worker: Worker, media: tuple[str, dict[str, bytes]]
) -> None:
    base, files = media
    manifest = {
        "batch_id": "multipart-batch",
        "analyzers": ["clip"],
        "options": SHAPES,
        "items": [
            {"asset_id": "upload-blue", "media_kind": "image"},
            {"asset_id": "by-url", "media_kind": "image", "url": f"{base}/red.jpg"},
            {"asset_id": "upload-red", "media_kind": "image"},
        ],
    }
    answer = httpx.post(
        f"{worker.url}/v1/analyze",
        data={"manifest": json.dumps(manifest)},
        files={
            "upload-red": ("one.jpg", files["red.jpg"], "image/jpeg"),
            "upload-blue": ("two.jpg", files["blue.jpg"], "image/jpeg"),
        },
        headers=AUTH,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert [i["asset_id"] for i in items] == ["upload-blue", "by-url", "upload-red"]
    assert [top_shape(i) for i in items] == ["shape/blue circle", "shape/red square", "shape/red square"]


def test_requests_the_worker_must_refuse(worker: Worker, media: tuple[str, dict[str, bytes]]) -> None:
    url = f"{worker.url}/v1/analyze"
    base, files = media

    def code(answer: httpx.Response) -> tuple[int, str]:
        return answer.status_code, answer.json()["detail"]["code"]

    path_item = {"batch_id": "p", "items": [{"asset_id": "x", "media_kind": "image", "path": "/etc/passwd"}]}
    assert code(httpx.post(url, json=path_item, headers=AUTH)) == (422, "path_not_allowed")
    no_source = {"batch_id": "n", "items": [{"asset_id": "x", "media_kind": "image"}]}
    assert code(httpx.post(url, json=no_source, headers=AUTH)) == (422, "url_required")
    file_url = {"batch_id": "f", "items": [{"asset_id": "x", "media_kind": "image", "url": "file:///etc/passwd"}]}
    assert code(httpx.post(url, json=file_url, headers=AUTH)) == (422, "url_required")
    assert code(httpx.post(url, content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})) == (
        422,
        "invalid_manifest",
    )
    assert code(httpx.post(url, content=b"hello", headers={**AUTH, "Content-Type": "text/plain"})) == (
        415,
        "unsupported_media_type",
    )
    # An item without a URL whose file part is missing, and a file part over the size limit.
    missing = {"batch_id": "m", "items": [{"asset_id": "absent", "media_kind": "image"}]}
    answer = httpx.post(
        url,
        data={"manifest": json.dumps(missing)},
        files={"other": ("x.jpg", files["red.jpg"], "image/jpeg")},
        headers=AUTH,
    )
    assert code(answer) == (422, "missing_file")
    big = {"batch_id": "b", "items": [{"asset_id": "big", "media_kind": "image"}]}
    answer = httpx.post(
        url,
        data={"manifest": json.dumps(big)},
        files={"big": ("big.jpg", b"\xff" * (MAX_ITEM_BYTES + 1), "image/jpeg")},
        headers=AUTH,
    )
    assert code(answer) == (413, "too_large")
    answer = httpx.post(url, files={"a": ("a.jpg", files["red.jpg"], "image/jpeg")}, headers=AUTH)
    assert code(answer) == (422, "missing_manifest")
    # The worker still serves after all of that.
    ok = httpx.post(url, json=url_manifest(base, "after", [("r", "red.jpg")]), headers=AUTH, timeout=60)
    assert ok.status_code == 200
    assert top_shape(ok.json()["items"][0]) == "shape/red square"


def test_concurrent_requests_share_executor_runs_and_each_gets_exactly_its_own_items(
    worker: Worker, media: tuple[str, dict[str, bytes]]
) -> None:
    base, _ = media
    # Four requests with the same options and the same item ids but different pictures behind them, one of them
    # with a corrupt picture; a fifth with invalid options, which cannot share their run.
    layouts = [
        [("a", "red.jpg"), ("b", "blue.jpg")],
        [("a", "blue.jpg"), ("b", "red.jpg")],
        [("a", "red.jpg"), ("b", "truncated.jpg")],
        [("a", "blue.jpg"), ("b", "blue.jpg"), ("c", "red.jpg")],
    ]
    manifests = [url_manifest(base, f"req-{n}", layout) for n, layout in enumerate(layouts)]
    bad_options = url_manifest(base, "bad-options", [("a", "red.jpg")])
    bad_options["options"] = {"clip": {"threshold": 7}}
    manifests.append(bad_options)
    before = worker.info()["batching"]

    start = threading.Barrier(len(manifests))
    answers: list[httpx.Response | None] = [None] * len(manifests)

    def send(index: int) -> None:
        start.wait()
        answers[index] = httpx.post(f"{worker.url}/v1/analyze", json=manifests[index], headers=AUTH, timeout=120)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(manifests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)

    results = []
    for answer in answers:
        assert answer is not None and answer.status_code == 200, answer and answer.text
        results.append(answer.json())
    for n, layout in enumerate(layouts):
        assert results[n]["batch_id"] == f"req-{n}"
        assert [i["asset_id"] for i in results[n]["items"]] == [a for a, _ in layout]
        for item, (_, name) in zip(results[n]["items"], layout, strict=True):
            if name == "truncated.jpg":
                assert item["errors"]["clip"]["code"] == "truncated" and not item["outputs"]
            else:
                expected = "shape/red square" if name == "red.jpg" else "shape/blue circle"
                assert top_shape(item) == expected, (n, item["asset_id"])
    assert results[4]["items"][0]["errors"]["clip"]["code"] == "invalid_options"

    after = worker.info()["batching"]
    requests = after["requests"] - before["requests"]
    runs = after["runs"] - before["runs"]
    assert requests == len(manifests)
    assert runs < requests, f"{requests} requests took {runs} executor runs"
    assert after["merged_runs"] > before["merged_runs"]
    assert after["items"] - before["items"] == sum(len(m["items"]) for m in manifests)


def test_serve_refuses_to_start_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GPUW_TOKEN"}
    result = CliRunner().invoke(cli_app, ["serve", "--port", str(free_port())], env=env)
    assert result.exit_code == 2
    assert "Refusing to serve without a token" in result.output


def test_a_worker_whose_model_cannot_be_had_reports_failed_health(tmp_path: Path) -> None:
    settings = WorkerSettings(models_dir=tmp_path, clip_model="no-such-model", device="cpu")
    with TestClient(create_app(settings, token=TOKEN, analyzers=["clip"])) as client:
        wait_until(lambda: client.get("/healthz").json()["status"] != "loading", 60, "loading to end")
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "failed"
        assert "no-such-model" in health.json()["errors"]["clip"]
        assert client.get("/v1/info", headers=AUTH).json()["status"] == "failed"


def _echo_run(manifest: BatchManifest) -> BatchResult:
    """A stand-in executor speaking the contract: tags each item with its own URL; a ``boom`` URL makes it raise."""
    if any(item.url == "boom" for item in manifest.items):
        raise RuntimeError("boom")
    return BatchResult(
        batch_id=manifest.batch_id,
        items=[
            ItemResult(asset_id=item.asset_id, errors={"echo": ItemError(code="seen", message=str(item.url))})
            for item in manifest.items
        ],
    )


def _manifest(batch_id: str, urls: list[str], options: dict[str, dict[str, Any]] | None = None) -> BatchManifest:
    return BatchManifest(
        batch_id=batch_id,
        analyzers=["echo"],
        options=options or {},
        items=[ManifestItem(asset_id="same-id", media_kind=MediaKind.IMAGE, url=url) for url in urls],
    )


def test_batcher_reruns_a_failed_merged_run_request_by_request_so_only_the_failing_one_fails() -> None:
    batcher = DynamicBatcher(_echo_run, max_batch_items=16, max_wait_s=0.2)
    futures: list[Future[BatchResult]] = [
        batcher.submit(_manifest("good-1", ["u1", "u2"])),
        batcher.submit(_manifest("bad", ["boom"])),
        batcher.submit(_manifest("good-2", ["u3"])),
        batcher.submit(_manifest("other-options", ["u4"], {"echo": {"x": 1}})),
    ]
    batcher.start()
    try:
        good_1, good_2, other = (futures[i].result(timeout=10) for i in (0, 2, 3))
        with pytest.raises(RuntimeError, match="boom"):
            futures[1].result(timeout=10)
    finally:
        batcher.stop()
    assert [i.errors["echo"].message for i in good_1.items] == ["u1", "u2"]
    assert [i.asset_id for i in good_1.items] == ["same-id", "same-id"]
    assert [i.errors["echo"].message for i in good_2.items] == ["u3"]
    assert [i.errors["echo"].message for i in other.items] == ["u4"]
    counters = batcher.counters.snapshot()
    assert counters["isolated_reruns"] == 1
    # One failed merged run of three, two of them rerun alone (the third raised again), and the other options alone.
    assert counters["runs"] == 3
