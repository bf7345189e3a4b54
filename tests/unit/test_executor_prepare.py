"""Analyzers' per-image preparation (resize, normalise) runs on the executor's decode threads, ahead of the model,
and changes no output."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from gpu_worker.contract import BatchManifest, ManifestItem, MediaKind
from gpu_worker.decode import decode_image
from gpu_worker.executor import InProcessExecutor
from gpu_worker.models.clip import ClipAnalyzer
from gpu_worker.settings import WorkerSettings
from tests.fixtures.tiny_models import TINY_CLIP_ID


def _executor(tmp_path: Path, catalog: Path) -> InProcessExecutor:
    settings = WorkerSettings(
        models_dir=tmp_path / "models",
        catalog_paths=[catalog],
        clip_model=TINY_CLIP_ID,
        device="cpu",
        decode_chunk_items=3,
        decode_workers=2,
    )
    return InProcessExecutor(settings)


def _photos(tmp_path: Path, count: int) -> list[Path]:
    paths = []
    for index in range(count):
        path = tmp_path / f"p{index}.jpg"
        image = Image.new("RGB", (1280, 720), (index * 40 % 255, 90, 200 - index * 20))
        image.paste((250, 250, 20), (100 + index * 50, 100, 400 + index * 50, 500))
        image.save(path, quality=90)
        paths.append(path)
    return paths


def _manifest(paths: list[Path]) -> BatchManifest:
    items = [ManifestItem(asset_id=p.stem, media_kind=MediaKind.IMAGE, path=str(p)) for p in paths]
    return BatchManifest(batch_id="prepare", analyzers=["clip"], items=items)


def _recording_preprocess(clip: ClipAnalyzer, threads: list[str]) -> Callable[[Image.Image], torch.Tensor]:
    preprocess = clip.clip.preprocess

    def recorded(image: Image.Image) -> torch.Tensor:
        threads.append(threading.current_thread().name)
        return preprocess(image)

    return recorded


def test_clip_inputs_are_prepared_on_the_decode_threads_once_and_the_outputs_are_unchanged(
    tmp_path: Path, tiny_clip_catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = _executor(tmp_path, tiny_clip_catalog)
    clip = executor.analyzer("clip")
    assert isinstance(clip, ClipAnalyzer)
    paths = _photos(tmp_path, 7)
    threads: list[str] = []
    monkeypatch.setattr(clip.clip, "preprocess", _recording_preprocess(clip, threads))

    result = executor.run(_manifest(paths))

    assert len(threads) == len(paths)
    assert all(name.startswith("gpuw-decode") for name in threads)
    # The same images through the analyzer alone, preparing each input inside run, give the same outputs.
    settings = executor.settings
    images = [
        decode_image(p, max_pixels=settings.max_image_pixels, max_side_px=settings.max_decode_side_px) for p in paths
    ]
    threads.clear()
    chunk = settings.decode_chunk_items  # the executor's chunks, so that every model call sees the same batch
    direct = [out for start in range(0, len(images), chunk) for out in clip.run(images[start : start + chunk], {})]
    assert threads == [threading.current_thread().name] * len(paths)
    for item, expected in zip(result.items, direct, strict=True):
        assert item.outputs["clip"] == expected


def test_a_preparation_that_fails_is_done_again_in_run_and_the_item_keeps_its_output(
    tmp_path: Path, tiny_clip_catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = _executor(tmp_path, tiny_clip_catalog)
    clip = executor.analyzer("clip")
    paths = _photos(tmp_path, 4)

    def refuses(item: Any) -> Any:
        raise RuntimeError("preparation failed")

    monkeypatch.setattr(clip, "prepare", refuses)

    result = executor.run(_manifest(paths))

    assert all("clip" in item.outputs and not item.errors for item in result.items)


def test_prepared_inputs_are_forgotten_after_the_block(tmp_path: Path, tiny_clip_catalog: Path) -> None:
    clip = _executor(tmp_path, tiny_clip_catalog).analyzer("clip")
    image = Image.new("RGB", (64, 64))
    with clip.prepared_inputs({id(image): "ready"}):
        assert clip._prepared_or(image, lambda _: "fresh") == "ready"
    assert clip._prepared_or(image, lambda _: "fresh") == "fresh"
