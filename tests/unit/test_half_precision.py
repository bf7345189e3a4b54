"""Half precision, as a GPU worker computes by default, keeps what float32 finds on the shared media: the same tags,
face and person counts, and embeddings with a cosine of at least 0.999. ``precision = "half"`` runs the float16
path on the CPU, so the check needs no GPU; ``bench/half_precision.py`` repeats it with the full-size models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_worker.contract import AnalyzerOutput
from gpu_worker.decode import decode_image, decode_video_frames
from gpu_worker.models import analyzer_class
from gpu_worker.settings import Precision, WorkerSettings, uses_half_precision
from gpu_worker.store import ModelStore

MIN_COSINE = 0.999
ANALYZERS = ("clip", "faces", "objects")
# ../shared/models/README.md gives the person detector's counts at this threshold.
OPTIONS = {"objects": {"conf": 0.5}}


def cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_auto_is_half_on_cuda_only_and_the_other_choices_hold_everywhere() -> None:
    assert uses_half_precision(Precision.AUTO, "cuda")
    assert uses_half_precision(Precision.AUTO, "cuda:1")
    assert not uses_half_precision(Precision.AUTO, "cpu")
    assert not uses_half_precision(Precision.FULL, "cuda")
    assert uses_half_precision(Precision.HALF, "cpu")
    assert WorkerSettings().precision is Precision.AUTO


@pytest.fixture
def pictures(shared_media: Path) -> list[Image.Image]:
    settings = WorkerSettings()
    limits = {"max_pixels": settings.max_image_pixels, "max_side_px": settings.max_decode_side_px}
    photos = [decode_image(shared_media / name, **limits) for name in ("bus.jpg", "zidane.jpg", "grace_hopper.jpg")]
    frames = decode_video_frames(shared_media / "talking_zidane_bus.mp4", count=2, **limits)
    return photos + [frame.image for frame in frames]


@pytest.fixture
def outputs_by_precision(
    cpu_models_env: dict[str, str], pictures: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[Precision, dict[str, list[AnalyzerOutput]]]]:
    for key, value in cpu_models_env.items():
        monkeypatch.setenv(key, value)
    found: dict[Precision, dict[str, list[AnalyzerOutput]]] = {}
    for precision in (Precision.FULL, Precision.HALF):
        settings = WorkerSettings(precision=precision)
        store = ModelStore(settings)
        found[precision] = {}
        for name in ANALYZERS:
            cls = analyzer_class(name)
            model_id = cls.default_model(settings)
            if name == "objects" and model_id != cpu_models_env.get("GPUW_OBJECTS_MODEL"):
                continue  # no person detector beside this checkout
            analyzer = cls(store, model_id)
            analyzer.load("cpu")
            assert analyzer.half_precision() is (precision is Precision.HALF)
            if name == "objects":
                assert analyzer._dtype == (torch.float16 if precision is Precision.HALF else torch.float32)
            found[precision][name] = analyzer.run(pictures, OPTIONS.get(name, {}))
    yield found


def test_half_precision_keeps_tags_counts_and_embeddings(
    outputs_by_precision: dict[Precision, dict[str, list[AnalyzerOutput]]],
) -> None:
    full, half = outputs_by_precision[Precision.FULL], outputs_by_precision[Precision.HALF]
    for mine, reference in zip(half["clip"], full["clip"], strict=True):
        assert mine.embedding is not None and reference.embedding is not None
        assert cosine(mine.embedding, reference.embedding) >= MIN_COSINE
        assert [t.tag for t in mine.tags] == [t.tag for t in reference.tags]
    face_counts = []
    for mine, reference in zip(half["faces"], full["faces"], strict=True):
        assert [t.tag for t in mine.tags] == [t.tag for t in reference.tags]
        face_counts.append(mine.payload["face_count"])
        # Detection is float32 in both, so the same faces come in the same order.
        for face, reference_face in zip(mine.payload["faces"], reference.payload["faces"], strict=True):
            assert face["box"] == reference_face["box"]
            assert cosine(face["embedding"], reference_face["embedding"]) >= MIN_COSINE
    assert face_counts[:3] == [2, 2, 1]
    if "objects" in full:
        counts = [output.payload["person_count"] for output in half["objects"]]
        assert counts == [output.payload["person_count"] for output in full["objects"]]
        assert counts[:3] == [4, 2, 0]
        for mine, reference in zip(half["objects"], full["objects"], strict=True):
            assert [t.tag for t in mine.tags] == [t.tag for t in reference.tags]
