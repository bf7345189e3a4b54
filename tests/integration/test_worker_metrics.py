"""``GET /metrics`` of ``gpu-worker serve`` (in process, tiny CLIP on the CPU): behind the worker's token, and after a
batch it shows the items each analyzer processed, the failed item's error code, the batch time and readiness."""

from __future__ import annotations

import io
import json
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from gpu_worker.server import create_app
from gpu_worker.settings import WorkerSettings
from tests.fixtures.tiny_models import TINY_CLIP_ID

TOKEN = "worker-metrics-token-51c0"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, "JPEG")
    return buffer.getvalue()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_worker_metrics_after_a_batch_show_items_processed_errors_and_readiness(
    tiny_clip_catalog: Path, tmp_path: Path
) -> None:
    settings = WorkerSettings(
        catalog_paths=[tiny_clip_catalog],
        clip_model=TINY_CLIP_ID,
        nsfw_model="",
        models_dir=tmp_path / "models",
        device="cpu",
        serve_warmup_images=2,
    )
    manifest = {
        "batch_id": "metrics-batch",
        "analyzers": ["clip"],
        "items": [
            {"asset_id": "red", "media_kind": "image"},
            {"asset_id": "blue", "media_kind": "image"},
            {"asset_id": "broken", "media_kind": "image"},
        ],
    }
    with TestClient(create_app(settings, token=TOKEN, analyzers=["clip"])) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        for _ in range(600):
            if client.get("/healthz").status_code == 200:
                break
        answer = client.post(
            "/v1/analyze",
            data={"manifest": json.dumps(manifest)},
            files={
                "red": ("r.jpg", _jpeg((220, 20, 20)), "image/jpeg"),
                "blue": ("b.jpg", _jpeg((20, 20, 220)), "image/jpeg"),
                "broken": ("x.jpg", b"\xff\xd8 not really a jpeg", "image/jpeg"),
            },
            headers=AUTH,
        )
        assert answer.status_code == 200, answer.text
        errors = {i["asset_id"]: i["errors"] for i in answer.json()["items"] if i["errors"]}
        assert list(errors) == ["broken"]
        code = errors["broken"]["clip"]["code"]

        scraped = client.get("/metrics", headers=AUTH)
    assert scraped.status_code == 200
    samples = _samples(scraped.text)
    assert samples[("gpuw_items_processed_total", frozenset({("analyzer", "clip")}))] == 2
    assert samples[("gpuw_item_errors_total", frozenset({("analyzer", "clip"), ("code", code)}))] == 1
    assert samples[("gpuw_batches_total", frozenset({("outcome", "ok")}))] == 1
    assert samples[("gpuw_batch_seconds_count", frozenset())] == 1
    assert samples[("gpuw_readiness", frozenset({("state", "ready")}))] == 1
    assert samples[("gpuw_readiness", frozenset({("state", "loading")}))] == 0
    assert samples[("gpuw_queue_depth_items", frozenset())] == 0
    assert samples[("gpuw_warmup_items_per_second", frozenset())] > 0
    assert samples[("gpuw_batcher_runs_total", frozenset())] == 1, "the batch (warm-up runs beside the batcher)"
