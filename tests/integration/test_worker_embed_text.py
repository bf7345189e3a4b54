"""The worker's ``POST /v1/embed/text`` with the tiny CLIP: token required, bounded requests, and L2-normalised text
embeddings from the loaded CLIP that lie nearer the pictures they describe."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gpu_worker.contract import BatchManifest, ManifestItem, MediaKind
from gpu_worker.server import create_app
from gpu_worker.settings import WorkerSettings
from tests.fixtures.processes import wait_until
from tests.fixtures.tiny_models import TINY_CLIP_ID, draw_shape

TOKEN = "test-embed-token-51c0"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(tiny_clip_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A worker app serving the tiny CLIP on the CPU, after its warm-up."""
    settings = WorkerSettings(
        models_dir=tmp_path_factory.mktemp("embed-models"),
        catalog_paths=[tiny_clip_catalog],
        clip_model=TINY_CLIP_ID,
        device="cpu",
        serve_warmup_images=1,
    )
    with TestClient(create_app(settings, token=TOKEN, analyzers=["clip"])) as test_client:
        wait_until(lambda: test_client.get("/healthz").json()["status"] != "loading", 120, "the warm-up", 0.2)
        assert test_client.get("/healthz").status_code == 200, test_client.get("/healthz").text
        yield test_client


def test_embed_text_needs_the_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = client.post("/v1/embed/text", json={"texts": ["a red square"]}, headers=headers)
        assert answer.status_code == 401 and answer.json()["detail"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "body",
    [{"texts": []}, {"texts": ["x"] * 17}, {"texts": ["x" * 301]}, {"texts": [" "]}, {"text": "x"}, {"texts": "x"}],
)
def test_embed_text_refuses_requests_outside_its_limits(client: TestClient, body: dict[str, object]) -> None:
    answer = client.post("/v1/embed/text", json=body, headers=AUTH)

    assert answer.status_code == 422 and answer.json()["detail"]["code"] == "invalid_request"


def test_embed_text_answers_unit_embeddings_of_the_loaded_clip_near_the_pictures_they_describe(
    client: TestClient,
) -> None:
    texts = ["a red square", "a blue circle"]
    answer = client.post("/v1/embed/text", json={"texts": texts}, headers=AUTH)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"model_id", "dim", "embeddings"} and body["model_id"] == TINY_CLIP_ID
    vectors = np.asarray(body["embeddings"], dtype=np.float32)
    assert vectors.shape == (2, body["dim"])
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1.0, 1.0], abs=1e-4)

    files = {}
    for name, (colour, shape) in {"red": ("red", "square"), "blue": ("blue", "circle")}.items():
        buffer = io.BytesIO()
        draw_shape(colour, shape, size=96).save(buffer, "JPEG", quality=95)
        files[name] = (f"{name}.jpg", buffer.getvalue(), "image/jpeg")
    manifest = BatchManifest(
        batch_id="pictures",
        analyzers=["clip"],
        options={"clip": {"nsfw": False}},
        items=[ManifestItem(asset_id=name, media_kind=MediaKind.IMAGE) for name in files],
    )
    analyzed = client.post(
        "/v1/analyze", data={"manifest": manifest.model_dump_json()}, files=files, headers=AUTH
    ).json()
    pictures = {
        i["asset_id"]: np.asarray(i["outputs"]["clip"]["embedding"], dtype=np.float32) for i in analyzed["items"]
    }
    assert float(vectors[0] @ pictures["red"]) > float(vectors[0] @ pictures["blue"])
    assert float(vectors[1] @ pictures["blue"]) > float(vectors[1] @ pictures["red"])
