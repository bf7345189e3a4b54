"""URL items of a batch are fetched through one shared HTTP client, and analyzed exactly as local files are."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from gpu_worker.contract import BatchManifest, ManifestItem, MediaKind
from gpu_worker.executor import InProcessExecutor
from gpu_worker.settings import WorkerSettings
from tests.fixtures.tiny_models import TINY_CLIP_ID, draw_shape, serve_folder

SHAPES = {"clip": {"vocabulary": {"shape": ["red square", "blue circle"]}, "threshold": 0.0}}


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory, tiny_clip_catalog: Path) -> InProcessExecutor:
    settings = WorkerSettings(
        models_dir=tmp_path_factory.mktemp("models"),
        catalog_paths=[tiny_clip_catalog],
        clip_model=TINY_CLIP_ID,
        device="cpu",
        decode_chunk_items=2,  # three chunks for five items: the client outlives the chunks
    )
    return InProcessExecutor(settings)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for index, (colour, shape) in enumerate([("red", "square"), ("blue", "circle")] * 2 + [("red", "circle")]):
        buffer = io.BytesIO()
        draw_shape(colour, shape, size=96).save(buffer, "JPEG", quality=92)
        path = folder / f"{index}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


class CountingClient(httpx.Client):
    """httpx.Client that counts how many were made."""

    made = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).made += 1
        super().__init__(*args, **kwargs)


def test_url_items_share_one_client_per_batch_and_match_the_results_of_local_files(
    executor: InProcessExecutor, pictures: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    local = BatchManifest(
        batch_id="local",
        options=SHAPES,
        items=[ManifestItem(asset_id=p.name, media_kind=MediaKind.IMAGE, path=str(p)) for p in pictures],
    )
    monkeypatch.setattr(httpx, "Client", CountingClient)
    CountingClient.made = 0
    with serve_folder(pictures[0].parent) as server:
        remote = BatchManifest(
            batch_id="remote",
            options=SHAPES,
            items=[
                ManifestItem(
                    asset_id=p.name,
                    media_kind=MediaKind.IMAGE,
                    url=f"{server.base_url}/{p.name}",
                    sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
                )
                for p in pictures
            ],
        )
        fetched = executor.run(remote)
    assert CountingClient.made == 1
    expected = executor.run(local)
    assert CountingClient.made == 1  # local paths need no client

    for got, want in zip(fetched.items, expected.items, strict=True):
        assert got.errors == {}
        assert got.outputs["clip"].tags == want.outputs["clip"].tags
        assert got.outputs["clip"].payload == want.outputs["clip"].payload
        a, b = got.outputs["clip"].embedding, want.outputs["clip"].embedding
        assert a is not None and b is not None
        cosine = sum(x * y for x, y in zip(a, b, strict=True)) / (
            sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5
        )
        assert cosine >= 0.999


def test_a_failed_download_in_a_shared_client_batch_fails_only_its_item(
    executor: InProcessExecutor, pictures: list[Path]
) -> None:
    with serve_folder(pictures[0].parent) as server:
        manifest = BatchManifest(
            batch_id="mixed",
            options=SHAPES,
            items=[
                ManifestItem(asset_id="gone", media_kind=MediaKind.IMAGE, url=f"{server.base_url}/gone.jpg"),
                ManifestItem(asset_id="ok", media_kind=MediaKind.IMAGE, url=f"{server.base_url}/{pictures[0].name}"),
                ManifestItem(
                    asset_id="swapped",
                    media_kind=MediaKind.IMAGE,
                    url=f"{server.base_url}/{pictures[1].name}",
                    sha256="0" * 64,
                ),
            ],
        )
        gone, ok, swapped = executor.run(manifest).items

    assert gone.errors["clip"].code == "download_failed"
    assert swapped.errors["clip"].code == "checksum_mismatch"
    assert ok.outputs["clip"].tags[0].tag == "shape/red square"


def test_download_without_a_batch_client_still_fetches_the_same_bytes(
    executor: InProcessExecutor, pictures: list[Path], tmp_path: Path
) -> None:
    item_bytes = pictures[2].read_bytes()
    with serve_folder(pictures[0].parent) as server:
        item = ManifestItem(
            asset_id="x",
            media_kind=MediaKind.IMAGE,
            url=f"{server.base_url}/{pictures[2].name}",
            sha256=hashlib.sha256(item_bytes).hexdigest(),
        )
        alone = executor._download_item(item, tmp_path / "alone")
        with httpx.Client() as client:
            shared = executor._download_item(item, tmp_path / "shared", client)

    assert alone.read_bytes() == shared.read_bytes() == item_bytes
    assert Image.open(shared).size == (96, 96)
