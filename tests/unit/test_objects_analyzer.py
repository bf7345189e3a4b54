"""The objects analyzer: YOLO weights through the model store, batched detection, tags, people counts, video."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, UnidentifiedImageError

import gpu_worker.models.objects as objects_module
from gpu_worker.contract import AnalyzerOutput, BatchManifest, ManifestItem, MediaKind
from gpu_worker.decode import Frame, decode_image, decode_video_frames
from gpu_worker.executor import InProcessExecutor
from gpu_worker.models import analyzer_class
from gpu_worker.models.base import InvalidOptionsError
from gpu_worker.models.objects import Letterbox, ObjectsAnalyzer, letterbox
from gpu_worker.settings import WorkerSettings
from gpu_worker.store import CatalogError, ModelStore
from tests.conftest import SHARED_MODELS
from tests.fixtures.tiny_models import serve_folder
from tests.fixtures.tiny_yolo import TINY_YOLO_NAMES, build_tiny_yolo, tiny_yolo_files, yolo_catalog_toml

PERSON_DETECTOR_DIR = SHARED_MODELS / "person-detector-yolov8"
PERSON_DETECTOR_FILE = "person_states_yolov8s.pt"
# From ../shared/models/README.md.
PERSON_DETECTOR_SHA256 = "5f6f620d0fa574ed80d8348bb8d46060148eb0ba24e3eea00d31a30cdadba41d"
# Random weights score every box near 0.001-0.01; a low threshold gives the tiny model detections to check.
TINY_CONF = 0.002
TINY_IMGSZ = 320


@pytest.fixture
def shared_models() -> Path:
    """The real models in ../shared/models; skips when a fresh clone has no such folder."""
    if not (PERSON_DETECTOR_DIR / PERSON_DETECTOR_FILE).exists():
        pytest.skip("../shared/models is absent (it ships beside the repository on development machines)")
    return SHARED_MODELS


@pytest.fixture(scope="module")
def tiny_yolo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding tiny-yolov8n.pt."""
    folder = tmp_path_factory.mktemp("tiny-yolo")
    build_tiny_yolo(folder, "yolov8n")
    return folder


def _settings(tmp_path: Path, catalog: str, **extra: object) -> WorkerSettings:
    path = tmp_path / "catalog.toml"
    path.write_text(catalog, encoding="utf-8")
    return WorkerSettings(models_dir=tmp_path / "models", catalog_paths=[path], **extra)  # type: ignore[arg-type]


def _tiny_analyzer(tmp_path: Path, folder: Path, weights: str = "tiny-yolov8n.pt") -> ObjectsAnalyzer:
    files = tiny_yolo_files(folder / weights)
    settings = _settings(tmp_path, yolo_catalog_toml("tiny-yolo", files, [("local", folder)]))
    analyzer = ObjectsAnalyzer(ModelStore(settings), "tiny-yolo")
    analyzer.load("cpu")
    return analyzer


def _scene(width: int, height: int, seed: int) -> Image.Image:
    """Coloured shapes on a noisy background: something for random filters to respond to."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(90, 170, size=(height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = int(rng.integers(0, width - 50)), int(rng.integers(0, height - 40))
        draw.rectangle((x, y, x + 50, y + 40), fill=tuple(int(v) for v in rng.integers(0, 256, size=3)))
    return image


def assert_well_formed(output: AnalyzerOutput, image: Image.Image, conf: float, person_labels: set[str]) -> None:
    """The structure every objects output has, whatever the model saw."""
    payload = output.payload
    assert (payload["image_width"], payload["image_height"]) == image.size
    detections = payload["detections"]
    scores = [d["score"] for d in detections]
    assert scores == sorted(scores, reverse=True)
    assert all(score >= conf for score in scores)
    for detection in detections:
        x1, y1, x2, y2 = detection["box"]
        assert 0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0
    tags = {tag.tag: tag.score for tag in output.tags}
    object_tags = {t: s for t, s in tags.items() if t.startswith("objects/")}
    best: dict[str, float] = {}
    counts: dict[str, int] = {}
    for detection in detections:
        best[detection["label"]] = max(best.get(detection["label"], 0.0), detection["score"])
        counts[detection["label"]] = counts.get(detection["label"], 0) + 1
    assert object_tags == {f"objects/{label}": pytest.approx(score, abs=1e-6) for label, score in best.items()}
    assert payload["counts"] == counts
    people = [d for d in detections if d["label"] in person_labels]
    assert payload["person_count"] == len(people)
    expected = {0: "none", 1: "solo", 2: "pair"}.get(len(people), "group")
    assert [t for t in tags if t.startswith("people/")] == [f"people/{expected}"]


def test_tiny_yolo_is_downloaded_verified_and_detects_on_a_batch(tiny_yolo_dir: Path, tmp_path: Path) -> None:
    weights = tiny_yolo_dir / "tiny-yolov8n.pt"
    files = tiny_yolo_files(weights)
    with serve_folder(tiny_yolo_dir) as server:
        settings = _settings(
            tmp_path, yolo_catalog_toml("tiny-yolo", files, [("url", server.base_url)]), allow_download=True
        )
        analyzer = ObjectsAnalyzer(ModelStore(settings), "tiny-yolo")
        analyzer.load("cpu")
        assert server.requests == ["/tiny-yolov8n.pt"]
    assert (tmp_path / "models" / "tiny-yolo" / weights.name).read_bytes() == weights.read_bytes()
    assert analyzer.classes.labels == TINY_YOLO_NAMES
    assert analyzer.warm_up() > 0.0  # the base class's generated picture runs through

    # Two shapes in one batch: landscape images share a forward pass, the portrait one gets its own.
    images = [_scene(400, 300, 1), _scene(200, 360, 2), _scene(400, 300, 3)]
    outputs = analyzer.run(images, {"conf": TINY_CONF, "imgsz": TINY_IMGSZ, "max_det": 25, "batch_size": 2})

    assert len(outputs) == 3
    for output, image in zip(outputs, images, strict=True):
        assert output.model_id == "tiny-yolo"
        assert_well_formed(output, image, TINY_CONF, {"person"})
        assert 0 < len(output.payload["detections"]) <= 25
        assert {d["label"] for d in output.payload["detections"]} <= set(TINY_YOLO_NAMES.values())
    # An image's result does not depend on what else is in its batch.
    alone = analyzer.run([images[2]], {"conf": TINY_CONF, "imgsz": TINY_IMGSZ, "max_det": 25})[0]
    assert alone.payload["detections"] == outputs[2].payload["detections"]


def _ultralytics_detections(weights: Path, image: Image.Image, **options: Any) -> list[dict[str, Any]]:
    from ultralytics import YOLO

    # ultralytics takes BGR arrays and PIL images; it is given the same RGB pixels as a PIL image.
    result = YOLO(str(weights)).predict(image, max_det=300, verbose=False, **options)[0]
    return [
        {"class_id": int(c), "score": float(s), "box": b}
        for c, s, b in zip(
            result.boxes.cls.tolist(), result.boxes.conf.tolist(), result.boxes.xyxyn.tolist(), strict=True
        )
    ]


def _assert_same_detections(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert len(ours) == len(theirs)

    def order(detection: dict[str, Any]) -> tuple[float, list[float]]:
        # Random weights tie many scores, and the two order ties differently.
        return -round(detection["score"], 5), [round(v, 3) for v in detection["box"]]

    for mine, reference_detection in zip(sorted(ours, key=order), sorted(theirs, key=order), strict=True):
        assert mine["class_id"] == reference_detection["class_id"]
        assert mine["score"] == pytest.approx(reference_detection["score"], abs=1e-5)
        assert mine["box"] == pytest.approx(reference_detection["box"], abs=1e-4)


def test_detections_match_ultralytics_own_predictor(tiny_yolo_dir: Path, tmp_path: Path) -> None:
    analyzer = _tiny_analyzer(tmp_path, tiny_yolo_dir)
    image = _scene(480, 270, 4)
    ours = analyzer.run([image], {"conf": TINY_CONF, "iou": 0.5, "imgsz": TINY_IMGSZ})[0].payload["detections"]
    theirs = _ultralytics_detections(
        tiny_yolo_dir / "tiny-yolov8n.pt", image, conf=TINY_CONF, iou=0.5, imgsz=TINY_IMGSZ
    )
    assert len(theirs) > 0
    _assert_same_detections(ours, theirs)


def test_each_image_of_a_batch_gets_what_ultralytics_gives_it_alone(tiny_yolo_dir: Path, tmp_path: Path) -> None:
    analyzer = _tiny_analyzer(tmp_path, tiny_yolo_dir)
    # One shape, so the four share a forward pass and its post-processing.
    images = [_scene(480, 270, seed) for seed in (4, 5, 6)] + [Image.new("RGB", (480, 270), (128, 128, 128))]
    options = {"conf": 0.004, "iou": 0.5, "imgsz": TINY_IMGSZ}
    outputs = analyzer.run(images, options)
    counts = []
    for image, output in zip(images, outputs, strict=True):
        theirs = _ultralytics_detections(tiny_yolo_dir / "tiny-yolov8n.pt", image, **options)
        _assert_same_detections(output.payload["detections"], theirs)
        counts.append(len(theirs))
    assert max(counts) > 0


def test_the_candidate_cap_and_a_class_filter_apply_to_each_image_of_a_batch_alone(
    tiny_yolo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    analyzer = _tiny_analyzer(tmp_path, tiny_yolo_dir)
    monkeypatch.setattr(objects_module, "MAX_NMS_CANDIDATES", 7)
    images = [_scene(480, 270, seed) for seed in range(4)]
    options = {"conf": TINY_CONF, "imgsz": TINY_IMGSZ, "classes": ["person", "car"]}
    batched = analyzer.run(images, options)
    assert batched == [analyzer.run([image], options)[0] for image in images]
    for output in batched:
        assert 0 < len(output.payload["detections"]) <= 7
        assert {d["label"] for d in output.payload["detections"]} <= {"person", "car"}


def test_nms_free_head_gives_well_formed_detections(tmp_path: Path) -> None:
    try:
        build_tiny_yolo(tmp_path / "e2e", "yolo26n", end2end=True)
    except FileNotFoundError:
        pytest.skip("this ultralytics release ships no yolo26n.yaml")
    analyzer = _tiny_analyzer(tmp_path, tmp_path / "e2e", "tiny-yolo26n.pt")
    assert analyzer._end2end
    image = _scene(320, 240, 5)
    output = analyzer.run([image], {"conf": TINY_CONF, "imgsz": TINY_IMGSZ, "max_det": 10})[0]
    assert 0 < len(output.payload["detections"]) <= 10
    assert_well_formed(output, image, TINY_CONF, {"person"})


def test_classes_option_filters_by_label_and_rejects_unknown_ones(tiny_yolo_dir: Path, tmp_path: Path) -> None:
    analyzer = _tiny_analyzer(tmp_path, tiny_yolo_dir)
    image = _scene(320, 320, 8)
    # Every anchor is a candidate at conf 0; NMS is per label, so filtering labels leaves the others' boxes alone.
    base = {"conf": 0.0, "imgsz": TINY_IMGSZ, "max_det": 5000}
    everything = analyzer.run([image], base)[0].payload["detections"]
    people = [d for d in everything if d["label"] == "person"]
    assert people

    only_people = analyzer.run([image], {**base, "classes": ["person"]})[0]
    assert only_people.payload["detections"] == people
    assert only_people.payload["person_count"] == len(people)
    by_id = analyzer.run([image], {**base, "classes": [1, 2]})[0]
    assert by_id.payload["detections"] == [d for d in everything if d["label"] in {"car", "dog"}]
    # With people filtered out there is nothing to count.
    assert by_id.payload["person_count"] is None
    assert not [t for t in by_id.tags if t.tag.startswith("people/")]

    with pytest.raises(InvalidOptionsError, match="zebra"):
        analyzer.run([image], {"classes": ["zebra"]})
    with pytest.raises(InvalidOptionsError):
        analyzer.run([image], {"conf": 2.0})
    with pytest.raises(InvalidOptionsError):
        analyzer.run([image], {"imgsize": 640})


def test_loading_ultralytics_leaves_pillow_reporting_unreadable_files(tiny_yolo_dir: Path, tmp_path: Path) -> None:
    from ultralytics import YOLO

    _tiny_analyzer(tmp_path, tiny_yolo_dir)
    YOLO(str(tiny_yolo_dir / "tiny-yolov8n.pt"))
    notes = tmp_path / "notes.jpg"
    notes.write_bytes(b"meeting notes, not a picture")
    with pytest.raises(UnidentifiedImageError):
        Image.open(notes)


def test_catalog_person_classes_must_exist_in_the_model(tiny_yolo_dir: Path, tmp_path: Path) -> None:
    files = tiny_yolo_files(tiny_yolo_dir / "tiny-yolov8n.pt")
    catalog = yolo_catalog_toml("tiny-yolo", files, [("local", tiny_yolo_dir)], {"person_classes": [0, 7]})
    analyzer = ObjectsAnalyzer(ModelStore(_settings(tmp_path, catalog)), "tiny-yolo")
    with pytest.raises(CatalogError, match=r"\[7\]"):
        analyzer.load("cpu")


def test_a_cached_checkpoint_ultralytics_cannot_read_is_fetched_again(tiny_yolo_dir: Path, tmp_path: Path) -> None:
    weights = tiny_yolo_dir / "tiny-yolov8n.pt"
    cached = tmp_path / "models" / "tiny-yolo" / weights.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with serve_folder(tiny_yolo_dir) as server:
        # No sha256 in the catalog: the truncated file is pinned as found, so only the failed load reveals it.
        catalog = yolo_catalog_toml("tiny-yolo", {weights.name: None}, [("url", server.base_url)])
        analyzer = ObjectsAnalyzer(ModelStore(_settings(tmp_path, catalog, allow_download=True)), "tiny-yolo")
        analyzer.load("cpu")
        assert server.requests == ["/tiny-yolov8n.pt"]
    assert cached.read_bytes() == weights.read_bytes()
    assert analyzer.loaded


def test_executor_runs_objects_with_the_configured_model(tiny_yolo_dir: Path, tmp_path: Path) -> None:
    assert analyzer_class("objects") is ObjectsAnalyzer
    files = tiny_yolo_files(tiny_yolo_dir / "tiny-yolov8n.pt")
    settings = _settings(
        tmp_path, yolo_catalog_toml("tiny-yolo", files, [("local", tiny_yolo_dir)]), objects_model="tiny-yolo"
    )
    photo = tmp_path / "scene.png"
    _scene(300, 200, 7).save(photo)
    manifest = BatchManifest(
        batch_id="b1",
        analyzers=["objects"],
        options={"objects": {"conf": TINY_CONF, "imgsz": TINY_IMGSZ}},
        items=[ManifestItem(asset_id="a1", media_kind=MediaKind.IMAGE, path=str(photo))],
    )
    result = InProcessExecutor(settings).run(manifest)
    assert result.unavailable == {}
    output = result.items[0].outputs["objects"]
    assert output.model_id == "tiny-yolo"
    assert (output.payload["image_width"], output.payload["image_height"]) == (300, 200)


def test_letterboxes_prepared_ahead_give_the_same_detections_and_another_imgsz_ignores_them(
    tiny_yolo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    analyzer = _tiny_analyzer(tmp_path, tiny_yolo_dir)
    images = [_scene(960, 540, seed) for seed in range(3)]
    options = {"conf": TINY_CONF}
    expected = analyzer.run(images, options)
    expected_320 = analyzer.run(images, {**options, "imgsz": 320})
    prepared = {id(image): analyzer.prepare(image) for image in images}
    assert all(box.input_shape == (384, 640) for box, _ in prepared.values())
    letterboxed: list[tuple[int, int]] = []

    def counting_letterbox(image: Image.Image, geometry: Letterbox) -> np.ndarray:
        letterboxed.append(geometry.input_shape)
        return letterbox(image, geometry)

    monkeypatch.setattr(objects_module, "letterbox", counting_letterbox)
    with analyzer.prepared_inputs(prepared):
        assert analyzer.run(images, options) == expected
        assert letterboxed == []
        # The prepared letterboxes are for the default 640 px only: another size is made in run.
        assert analyzer.run(images, {**options, "imgsz": 320}) == expected_320
        assert letterboxed == [(192, 320)] * 3


# Real weights on real photos (../shared): the facts in ../shared/models/README.md.


@pytest.fixture(scope="module")
def person_detector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectsAnalyzer]:
    """The shared YOLOv8s person detector through the store: both of its classes (Normal, Fall) are people."""
    if not (PERSON_DETECTOR_DIR / PERSON_DETECTOR_FILE).exists():
        pytest.skip("../shared/models is absent (it ships beside the repository on development machines)")
    tmp_path = tmp_path_factory.mktemp("person-detector")
    catalog = yolo_catalog_toml(
        "person-detector",
        {PERSON_DETECTOR_FILE: PERSON_DETECTOR_SHA256},
        [("local", PERSON_DETECTOR_DIR)],
        {"labels": {"0": "person", "1": "person"}, "person_classes": [0, 1]},
    )
    analyzer = ObjectsAnalyzer(ModelStore(_settings(tmp_path, catalog)), "person-detector")
    analyzer.load("cpu")
    yield analyzer
    shutil.rmtree(tmp_path, ignore_errors=True)


def _decoded(path: Path) -> Image.Image:
    # As the executor decodes: EXIF-transposed RGB, longest side at most the decode size.
    settings = WorkerSettings()
    return decode_image(path, max_pixels=settings.max_image_pixels, max_side_px=settings.max_decode_side_px)


def _shared_video_frames(shared_media: Path, count: int) -> list[Frame]:
    # As the executor decodes a video: frames spread over its length, longest side at most the decode size.
    settings = WorkerSettings()
    return decode_video_frames(
        shared_media / "talking_zidane_bus.mp4",
        count=count,
        max_pixels=settings.max_image_pixels,
        max_side_px=settings.max_decode_side_px,
    )


def test_person_detector_counts_the_people_in_the_shared_photos(
    person_detector: ObjectsAnalyzer, shared_media: Path, shared_models: Path
) -> None:
    names = ["bus.jpg", "zidane.jpg", "grace_hopper.jpg"]
    images = [_decoded(shared_media / name) for name in names]
    outputs = person_detector.run(images, {"conf": 0.5})

    counts = {name: output.payload["person_count"] for name, output in zip(names, outputs, strict=True)}
    assert counts == {"bus.jpg": 4, "zidane.jpg": 2, "grace_hopper.jpg": 0}
    people_tags = [[t.tag for t in o.tags if t.tag.startswith("people/")] for o in outputs]
    assert people_tags == [["people/group"], ["people/pair"], ["people/none"]]
    for output, image in zip(outputs, images, strict=True):
        assert_well_formed(output, image, 0.5, {"person"})
        assert {d["class_name"] for d in output.payload["detections"]} <= {"Normal", "Fall"}
    assert [t.tag for t in outputs[0].tags if t.tag.startswith("objects/")] == ["objects/person"]


def test_person_detector_on_a_batch_of_video_frames_matches_ultralytics_frame_by_frame(
    person_detector: ObjectsAnalyzer, shared_media: Path, shared_models: Path
) -> None:
    images = [frame.image for frame in _shared_video_frames(shared_media, 6)]
    outputs = person_detector.run(images, {"conf": 0.5})
    counts = []
    for image, output in zip(images, outputs, strict=True):
        theirs = _ultralytics_detections(PERSON_DETECTOR_DIR / PERSON_DETECTOR_FILE, image, conf=0.5, iou=0.7)
        _assert_same_detections(output.payload["detections"], theirs)
        counts.append(output.payload["person_count"])
    # Zidane's two men in the first half, the bus's four people in the second.
    assert counts[0] == 2 and counts[-1] == 4


def _write_video(path: Path, frames: list[Image.Image], fps: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 8_000_000
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_person_detector_on_video_reports_the_most_people_in_any_frame(
    person_detector: ObjectsAnalyzer, shared_media: Path, shared_models: Path, tmp_path: Path
) -> None:
    zidane = Image.open(shared_media / "zidane.jpg").convert("RGB")
    bus = Image.open(shared_media / "bus.jpg").convert("RGB")
    bus_frame = Image.new("RGB", zidane.size, (0, 0, 0))
    bus_scaled = bus.resize((bus.width * zidane.height // bus.height, zidane.height))
    bus_frame.paste(bus_scaled, ((zidane.width - bus_scaled.width) // 2, 0))
    video = tmp_path / "zidane_then_bus.mp4"
    # 2 fps, two frames of each: sampling the middle of each half lands once on each picture.
    _write_video(video, [zidane, zidane, bus_frame, bus_frame], fps=2)
    settings = WorkerSettings()
    frames = decode_video_frames(
        video, count=2, max_pixels=settings.max_image_pixels, max_side_px=settings.max_decode_side_px
    )
    assert len(frames) == 2

    outputs = person_detector.run([frame.image for frame in frames], {"conf": 0.5})
    aggregated = person_detector.aggregate([(f.timestamp_s, o) for f, o in zip(frames, outputs, strict=True)])

    per_frame = [o.payload["person_count"] for o in outputs]
    assert per_frame[0] == 2  # zidane
    assert per_frame[1] > per_frame[0]  # the bus scene has more people
    assert aggregated.payload["person_count"] == max(per_frame)
    assert [f["timestamp_s"] for f in aggregated.payload["frames"]] == [f.timestamp_s for f in frames]
    assert [f["person_count"] for f in aggregated.payload["frames"]] == per_frame
    assert [t.tag for t in aggregated.tags if t.tag.startswith("people/")] == ["people/group"]
    best = max(d["score"] for o in outputs for d in o.payload["detections"])
    assert {t.tag: t.score for t in aggregated.tags}["objects/person"] == best
    assert aggregated.embedding is None


def test_person_detector_finds_the_people_in_the_shared_video(
    person_detector: ObjectsAnalyzer, shared_media: Path, shared_models: Path
) -> None:
    frames = _shared_video_frames(shared_media, WorkerSettings().video_frames)
    outputs = person_detector.run([frame.image for frame in frames], {"conf": 0.5})
    counts = [
        (frame.timestamp_s, output.payload["person_count"]) for frame, output in zip(frames, outputs, strict=True)
    ]
    aggregated = person_detector.aggregate([(f.timestamp_s, o) for f, o in zip(frames, outputs, strict=True)])

    # The first half is the zidane picture (2 people), the second the bus (people, smaller at 640x360).
    first_half = [n for ts, n in counts if ts is not None and ts < 3.8]
    second_half = [n for ts, n in counts if ts is not None and ts >= 3.8]
    assert first_half and all(n == 2 for n in first_half), counts
    assert second_half and all(n >= 2 for n in second_half), counts
    assert aggregated.payload["person_count"] >= 2
    assert any(t.tag in ("people/pair", "people/group") for t in aggregated.tags)
