"""The dedicated NSFW classifier (open_nsfw on onnxruntime): alone as ``nsfw``, and beside CLIP's prompt score.

The real model comes from ../shared/models through the model store; the tests that need it skip when it is absent.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import gpu_worker.models.nsfw as nsfw_module
from gpu_worker.contract import BatchManifest, ItemResult, ManifestItem, MediaKind
from gpu_worker.decode import decode_image
from gpu_worker.executor import InProcessExecutor
from gpu_worker.models.clip import ClipAnalyzer
from gpu_worker.models.nsfw import BGR_MEAN, CROP_PX, NsfwAnalyzer, preprocess
from gpu_worker.settings import WorkerSettings
from tests.fixtures.tiny_models import TINY_CLIP_ID, draw_shape
from tests.fixtures.tiny_whisper import (
    OPEN_NSFW_ID,
    OPEN_NSFW_README_SCORES,
    catalog_entry_toml,
    require_shared,
    require_shared_media,
    shared_speech_catalog,
    write_video,
)

PHOTOS = tuple(OPEN_NSFW_README_SCORES)
SHAPES = {"vocabulary": {"shape": ["red square", "blue circle"]}, "threshold": 0.0}


@pytest.fixture(scope="module")
def shared_models() -> Path:
    """../shared/models with the open_nsfw ONNX file; skips when a fresh clone has none."""
    return require_shared("open-nsfw/open-nsfw.onnx")


@pytest.fixture(scope="module")
def photos() -> dict[str, Path]:
    folder = require_shared_media(*PHOTOS)
    return {name: folder / name for name in PHOTOS}


@pytest.fixture(scope="module")
def nsfw_catalog(shared_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_speech_catalog(tmp_path_factory.mktemp("nsfw-catalog") / "models.toml")


def make_executor(models_dir: Path, catalogs: list[Path], nsfw_model: str) -> InProcessExecutor:
    return InProcessExecutor(
        WorkerSettings(
            models_dir=models_dir, catalog_paths=catalogs, clip_model=TINY_CLIP_ID, nsfw_model=nsfw_model, device="cpu"
        )
    )


@pytest.fixture(scope="module")
def executor(
    tmp_path_factory: pytest.TempPathFactory, nsfw_catalog: Path, tiny_clip_catalog: Path
) -> InProcessExecutor:
    return make_executor(tmp_path_factory.mktemp("models"), [tiny_clip_catalog, nsfw_catalog], OPEN_NSFW_ID)


def run(
    executor: InProcessExecutor, items: dict[str, Path], kind: MediaKind, **options: dict[str, Any]
) -> dict[str, ItemResult]:
    manifest = BatchManifest(
        batch_id="n",
        analyzers=list(options),
        options=options,
        items=[ManifestItem(asset_id=name, media_kind=kind, path=str(path)) for name, path in items.items()],
    )
    result = executor.run(manifest)
    assert result.unavailable == {}
    return {r.asset_id: r for r in result.items}


def test_preprocessing_gives_a_224_bgr_crop_with_the_caffe_means_subtracted() -> None:
    red = Image.new("RGB", (300, 200), (255, 0, 0))

    pixels = preprocess(red)

    assert pixels.shape == (CROP_PX, CROP_PX, 3)
    assert pixels.dtype == np.float32
    # BGR: red is the last channel. JPEG moves flat colours by a few levels at most.
    np.testing.assert_allclose(pixels.mean(axis=(0, 1)), np.array([0.0, 0.0, 255.0]) - BGR_MEAN, atol=3.0)


def test_safe_photos_score_low_as_measured_with_the_reference_package(
    executor: InProcessExecutor, photos: dict[str, Path]
) -> None:
    results = run(executor, photos, MediaKind.IMAGE, nsfw={})

    scores = {name: results[name].outputs["nsfw"].payload["nsfw_score"] for name in PHOTOS}
    assert all(score < 0.01 for score in scores.values())
    # Same order of magnitude as the reference; the worker sees the photos shrunk to 960 px first.
    for name, score in scores.items():
        assert OPEN_NSFW_README_SCORES[name] / 3 < score < OPEN_NSFW_README_SCORES[name] * 3, name
    assert all(results[name].outputs["nsfw"].tags == [] for name in PHOTOS)
    assert (executor.store.folder(OPEN_NSFW_ID) / "open-nsfw.onnx").is_file()


def test_inputs_prepared_on_the_decode_threads_score_exactly_as_prepared_in_run(
    executor: InProcessExecutor, photos: dict[str, Path]
) -> None:
    results = run(executor, photos, MediaKind.IMAGE, nsfw={})
    nsfw = executor.analyzer("nsfw")
    assert isinstance(nsfw, NsfwAnalyzer)
    settings = executor.settings
    images = [
        decode_image(path, max_pixels=settings.max_image_pixels, max_side_px=settings.max_decode_side_px)
        for path in photos.values()
    ]

    direct = nsfw.scores(images)

    assert [results[name].outputs["nsfw"].payload["nsfw_score"] for name in photos] == [round(s, 6) for s in direct]


def test_threshold_zero_tags_every_image_with_its_score(executor: InProcessExecutor, photos: dict[str, Path]) -> None:
    results = run(executor, {"bus.jpg": photos["bus.jpg"]}, MediaKind.IMAGE, nsfw={"threshold": 0.0})

    output = results["bus.jpg"].outputs["nsfw"]
    assert [(t.tag, t.score) for t in output.tags] == [("nsfw/explicit", output.payload["nsfw_score"])]


def test_clip_reports_the_classifier_score_beside_its_prompt_score(
    executor: InProcessExecutor, photos: dict[str, Path]
) -> None:
    results = run(executor, photos, MediaKind.IMAGE, clip=SHAPES, nsfw={})

    for name in PHOTOS:
        clip = results[name].outputs["clip"].payload
        assert 0.0 <= clip["nsfw_score"] <= 1.0
        assert clip["nsfw_classifier_score"] == results[name].outputs["nsfw"].payload["nsfw_score"]
        assert "nsfw_classifier_unavailable" not in clip


def test_with_clip_and_nsfw_together_the_classifier_runs_once_per_image(
    executor: InProcessExecutor, photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = executor.analyzer("clip")
    assert isinstance(clip, ClipAnalyzer) and clip.nsfw_classifier is not None
    nsfw = executor.analyzer("nsfw")
    classifier_runs: list[int] = []
    clip_classifier_scores = clip.nsfw_classifier.scores

    def counted(images: Any, batch_size: int = 32) -> list[float]:
        classifier_runs.append(len(images))
        return clip_classifier_scores(images, batch_size)

    monkeypatch.setattr(clip.nsfw_classifier, "scores", counted)
    before_nsfw = nsfw.stats.images

    results = run(executor, photos, MediaKind.IMAGE, clip=SHAPES, nsfw={})

    assert nsfw.stats.images - before_nsfw == len(PHOTOS)
    assert classifier_runs == [], "CLIP took the nsfw analyzer's scores instead of running its classifier again"
    for name in PHOTOS:
        assert (
            results[name].outputs["clip"].payload["nsfw_classifier_score"]
            == results[name].outputs["nsfw"].payload["nsfw_score"]
        )
    # Alone, CLIP runs the classifier itself, with the same scores.
    alone = run(executor, photos, MediaKind.IMAGE, clip=SHAPES)
    assert sum(classifier_runs) == len(PHOTOS)
    for name in PHOTOS:
        assert (
            alone[name].outputs["clip"].payload["nsfw_classifier_score"]
            == results[name].outputs["nsfw"].payload["nsfw_score"]
        )


def test_clip_alone_has_its_classifier_inputs_prepared_on_the_decode_threads(
    executor: InProcessExecutor, photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = executor.analyzer("clip")
    assert isinstance(clip, ClipAnalyzer) and clip.nsfw_classifier is not None
    threads: list[str] = []
    preprocess = nsfw_module.preprocess

    def recorded(image: Image.Image) -> Any:
        threads.append(threading.current_thread().name)
        return preprocess(image)

    monkeypatch.setattr(nsfw_module, "preprocess", recorded)

    alone = run(executor, photos, MediaKind.IMAGE, clip=SHAPES)

    assert len(threads) == len(PHOTOS)
    assert all(name.startswith("gpuw-decode") for name in threads), threads
    settings = executor.settings
    images = [
        decode_image(path, max_pixels=settings.max_image_pixels, max_side_px=settings.max_decode_side_px)
        for path in photos.values()
    ]
    direct = clip.nsfw_classifier.scores(images)
    scores = [alone[name].outputs["clip"].payload["nsfw_classifier_score"] for name in photos]
    assert scores == [round(score, 6) for score in direct]
    # With the nsfw analyzer in the batch, CLIP takes its scores and nothing is prepared twice.
    threads.clear()
    run(executor, photos, MediaKind.IMAGE, clip=SHAPES, nsfw={})
    assert len(threads) == len(PHOTOS)


def test_a_video_gets_its_highest_frame_score(executor: InProcessExecutor, tmp_path: Path) -> None:
    video = tmp_path / "fade.mp4"
    write_video(video, 2.0, with_audio=False)

    results = run(executor, {"video": video}, MediaKind.VIDEO, clip=SHAPES, nsfw={})

    for name, key in (("nsfw", "nsfw_score"), ("clip", "nsfw_classifier_score")):
        payload = results["video"].outputs[name].payload
        assert payload[key] == max(frame[key] for frame in payload["frames"])


def test_clip_without_the_classifier_weights_still_tags_and_says_why(tmp_path: Path, tiny_clip_catalog: Path) -> None:
    absent = tmp_path / "absent.toml"
    absent.write_text(
        catalog_entry_toml(
            "open-nsfw-elsewhere",
            family="nsfw",
            fmt="onnx",
            folder=tmp_path / "no-such-folder",
            files={"open-nsfw.onnx": "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"},
        ),
        encoding="utf-8",
    )
    executor = make_executor(tmp_path / "models", [tiny_clip_catalog, absent], "open-nsfw-elsewhere")
    image = tmp_path / "square.jpg"
    draw_shape("red", "square", size=96).save(image)

    results = run(executor, {"square": image}, MediaKind.IMAGE, clip=SHAPES)

    payload = results["square"].outputs["clip"].payload
    assert results["square"].outputs["clip"].tags[0].tag == "shape/red square"
    assert "nsfw_classifier_score" not in payload
    assert "gpu-worker models fetch open-nsfw-elsewhere" in payload["nsfw_classifier_unavailable"]


def test_no_classifier_configured_means_no_classifier_keys(tmp_path: Path, tiny_clip_catalog: Path) -> None:
    executor = make_executor(tmp_path / "models", [tiny_clip_catalog], "")
    image = tmp_path / "square.jpg"
    draw_shape("red", "square", size=96).save(image)

    payload = run(executor, {"square": image}, MediaKind.IMAGE, clip=SHAPES)["square"].outputs["clip"].payload

    assert "nsfw_score" in payload
    assert not {"nsfw_classifier_score", "nsfw_classifier_unavailable"} & set(payload)


def test_an_intact_file_that_is_no_onnx_model_makes_the_analyzer_unavailable(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "open-nsfw.onnx").write_bytes(b"this is not a protobuf" * 64)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        catalog_entry_toml("broken-nsfw", family="nsfw", fmt="onnx", folder=folder, files={"open-nsfw.onnx": None}),
        encoding="utf-8",
    )
    executor = make_executor(tmp_path / "models", [catalog], "broken-nsfw")
    image = tmp_path / "square.jpg"
    draw_shape("red", "square", size=96).save(image)
    manifest = BatchManifest(
        batch_id="b",
        analyzers=["nsfw"],
        items=[ManifestItem(asset_id="square", media_kind=MediaKind.IMAGE, path=str(image))],
    )

    result = executor.run(manifest)

    assert "cannot be loaded" in result.unavailable["nsfw"]
    assert result.items[0].outputs == {} and result.items[0].errors == {}
