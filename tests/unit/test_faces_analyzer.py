"""The faces analyzer: MTCNN weights from the installed wheel through the `package` source, a seeded FaceNet embedder
downloaded from a local HTTP server, and the face counts of the shared photos and video."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from gpu_worker.contract import AnalyzerOutput, BatchManifest, ManifestItem, MediaKind
from gpu_worker.decode import decode_image, decode_video_frames
from gpu_worker.errors import ModelLoadError, ModelUnavailableError
from gpu_worker.executor import InProcessExecutor
from gpu_worker.models import analyzer_class
from gpu_worker.models.base import InvalidOptionsError
from gpu_worker.models.faces import DETECTOR_FILES, EMBEDDING_DIM, FacesAnalyzer
from gpu_worker.settings import DEFAULT_FACE_DETECTOR_MODEL, DEFAULT_FACES_MODEL, DeviceChoice, WorkerSettings
from gpu_worker.store import CatalogError, ModelState, ModelStore, PackageSource, PinState, load_catalog, sha256_of
from tests.conftest import SHARED_MEDIA
from tests.fixtures.tiny_faces import TINY_FACENET_FILE, TINY_FACENET_ID, build_tiny_facenet, faces_catalog_toml
from tests.fixtures.tiny_models import serve_folder

# What ../shared/media/README.md lists for MTCNN at p >= 0.9.
SHARED_PHOTO_FACES = {"bus.jpg": 2, "zidane.jpg": 2, "grace_hopper.jpg": 1}
WRONG_SHA256 = "0" * 64
DECODE_SIDE_PX = WorkerSettings().max_decode_side_px


def write_catalog(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def make_store(folder: Path, catalog_text: str | None = None, *, allow_download: bool = False) -> ModelStore:
    catalogs = [write_catalog(folder, catalog_text)] if catalog_text is not None else []
    settings = WorkerSettings(
        models_dir=folder / "models", catalog_paths=catalogs, allow_download=allow_download, download_timeout_s=10
    )
    return ModelStore(settings)


def photo(shared_media: Path, name: str, max_side_px: int | None = DECODE_SIDE_PX) -> Image.Image:
    return decode_image(shared_media / name, max_pixels=100_000_000, max_side_px=max_side_px)


def norm(vector: list[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in vector))


def dot(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def noise_crop(seed: int, size: int = 120) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randint(0, size), rng.randint(0, size)
        colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        draw.ellipse((x - 15, y - 15, x + 15, y + 15), fill=colour)
    return image


@dataclass
class Served:
    """The analyzer loaded through a store whose only embedder source was the local HTTP server."""

    analyzer: FacesAnalyzer
    store: ModelStore
    requests: list[str]
    sha256: str


@pytest.fixture(scope="module")
def tiny_facenet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-facenet")
    build_tiny_facenet(folder)
    return folder


@pytest.fixture(scope="module")
def served(tiny_facenet_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    digest = sha256_of(tiny_facenet_dir / TINY_FACENET_FILE)
    with serve_folder(tiny_facenet_dir) as server:
        # Unpinned like the real release: the sha256 is recorded at the first download.
        catalog = faces_catalog_toml(
            TINY_FACENET_ID, {TINY_FACENET_FILE: None}, [{"kind": "url", "base_url": server.base_url}]
        )
        store = make_store(tmp_path_factory.mktemp("served"), catalog, allow_download=True)
        analyzer = FacesAnalyzer(store, TINY_FACENET_ID)
        analyzer.load("cpu")
        yield Served(analyzer, store, list(server.requests), digest)


@pytest.fixture(scope="module")
def analyzer(served: Served) -> FacesAnalyzer:
    return served.analyzer


@pytest.fixture(scope="module")
def shared_media_folder() -> Path:
    """``shared_media`` for module-scoped fixtures: ../shared/media, or a skip when it is absent."""
    if not (SHARED_MEDIA / "bus.jpg").exists():
        pytest.skip("../shared/media is absent (it ships beside the repository on development machines)")
    return SHARED_MEDIA


# model store: the `package` source and the embedder download


def test_mtcnn_weights_resolve_from_the_installed_wheel_and_match_the_catalog(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    entry = store.entry(DEFAULT_FACE_DETECTOR_MODEL)
    source = entry.sources[0]
    assert isinstance(source, PackageSource)

    folder = store.resolve(DEFAULT_FACE_DETECTOR_MODEL)

    assert folder == tmp_path / "models" / DEFAULT_FACE_DETECTOR_MODEL
    assert sorted(f.name for f in entry.files) == sorted(DETECTOR_FILES)
    for model_file in entry.files:
        assert sha256_of(folder / model_file.name) == model_file.sha256
        assert sha256_of(source.folder() / model_file.name) == model_file.sha256
    status = store.status(DEFAULT_FACE_DETECTOR_MODEL)
    assert (status.state, status.pin) == (ModelState.PRESENT, PinState.CATALOG)


def test_package_source_with_a_wrong_sha256_is_rejected_and_leaves_no_file(tmp_path: Path) -> None:
    files = {name: WRONG_SHA256 if name == "pnet.pt" else None for name in DETECTOR_FILES}
    package = {"kind": "package", "package": "facenet_pytorch", "path": "data"}
    store = make_store(tmp_path, faces_catalog_toml("mtcnn-wrong", files, [package], model_format="facenet_mtcnn"))

    with pytest.raises(ModelUnavailableError) as caught:
        store.resolve("mtcnn-wrong")

    assert "sha256" in caught.value.message
    assert not (tmp_path / "models" / "mtcnn-wrong" / "pnet.pt").exists()
    assert not [p for p in (tmp_path / "models" / "mtcnn-wrong").iterdir() if p.name.endswith(".part")]


def test_package_source_of_a_package_that_is_not_installed_is_unavailable(tmp_path: Path) -> None:
    package = {"kind": "package", "package": "no_such_package_for_faces", "path": "data"}
    store = make_store(tmp_path, faces_catalog_toml("absent", {"pnet.pt": None}, [package]))

    with pytest.raises(ModelUnavailableError) as caught:
        store.resolve("absent")

    assert "no_such_package_for_faces is not installed" in caught.value.message


def test_package_source_refuses_a_path_outside_the_package(tmp_path: Path) -> None:
    package = {"kind": "package", "package": "facenet_pytorch", "path": "../torch"}
    catalog = write_catalog(tmp_path, faces_catalog_toml("escape", {"pnet.pt": None}, [package]))

    with pytest.raises(CatalogError, match="relative folder inside the package"):
        load_catalog([catalog])


def test_embedder_is_downloaded_from_the_catalog_url_pinned_and_loaded(served: Served) -> None:
    assert served.requests == [f"/{TINY_FACENET_FILE}"]
    status = served.store.status(TINY_FACENET_ID)
    assert (status.state, status.pin) == (ModelState.PRESENT, PinState.RECORDED)
    assert sha256_of(status.folder / TINY_FACENET_FILE) == served.sha256
    assert served.analyzer.loaded and served.analyzer.detector_id == DEFAULT_FACE_DETECTOR_MODEL


def test_embedder_whose_download_fails_its_sha256_is_unavailable(tiny_facenet_dir: Path, tmp_path: Path) -> None:
    with serve_folder(tiny_facenet_dir) as server:
        catalog = faces_catalog_toml(
            TINY_FACENET_ID, {TINY_FACENET_FILE: WRONG_SHA256}, [{"kind": "url", "base_url": server.base_url}]
        )
        analyzer = FacesAnalyzer(make_store(tmp_path, catalog, allow_download=True), TINY_FACENET_ID)
        with pytest.raises(ModelUnavailableError) as caught:
            analyzer.load("cpu")

    assert "sha256" in caught.value.message
    assert not analyzer.loaded
    assert [p.name for p in (tmp_path / "models" / TINY_FACENET_ID).iterdir()] == []


def test_embedder_entry_of_another_format_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "weights.pt").write_bytes(b"not read")
    catalog = faces_catalog_toml(
        "odd", {"weights.pt": None}, [{"kind": "local", "path": str(tmp_path / "src")}], model_format="open_clip"
    )

    with pytest.raises(ModelLoadError, match="facenet_inception_resnet_v1"):
        FacesAnalyzer(make_store(tmp_path, catalog), "odd").load("cpu")


def test_a_corrupted_cached_detector_file_is_copied_again_from_the_wheel_at_load(served: Served) -> None:
    folder = served.store.folder(DEFAULT_FACE_DETECTOR_MODEL)
    expected = sha256_of(folder / "onet.pt")
    (folder / "onet.pt").write_bytes(b"\0" * 1000)

    FacesAnalyzer(served.store, TINY_FACENET_ID).load("cpu")

    assert sha256_of(folder / "onet.pt") == expected


def test_a_detector_that_fails_to_load_is_fetched_once_more_then_reported(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for name in (*DETECTOR_FILES, "embedder.pt"):
        (garbage / name).write_bytes(b"not a state dict")
    local = [{"kind": "local", "path": str(garbage)}]
    catalog = faces_catalog_toml("bad-mtcnn", dict.fromkeys(DETECTOR_FILES), local, model_format="facenet_mtcnn")
    catalog += faces_catalog_toml("some-embedder", {"embedder.pt": None}, local)
    catalog_path = write_catalog(tmp_path, catalog)
    settings = WorkerSettings(
        models_dir=tmp_path / "models", catalog_paths=[catalog_path], face_detector_model="bad-mtcnn"
    )
    store = ModelStore(settings)

    with pytest.raises(ModelLoadError, match="even after fetching it again") as caught:
        FacesAnalyzer(store, "some-embedder").load("cpu")

    assert caught.value.model_id == "bad-mtcnn"
    assert store.status("bad-mtcnn").pin is PinState.RECORDED


def test_faces_is_registered_with_the_vggface2_embedder_as_default() -> None:
    assert analyzer_class("faces") is FacesAnalyzer
    settings = WorkerSettings()
    assert FacesAnalyzer.default_model(settings) == DEFAULT_FACES_MODEL
    entry = ModelStore(settings).entry(DEFAULT_FACES_MODEL)
    assert entry.weights.name == "20180402-114759-vggface2.pt"


# embeddings and options


def test_embeddings_are_512d_l2_normalised_and_deterministic_for_the_same_crop(analyzer: FacesAnalyzer) -> None:
    first = analyzer.embed([noise_crop(1), noise_crop(2)])
    alone = analyzer.embed([noise_crop(1)], batch_size=1)

    assert first.shape == (2, EMBEDDING_DIM)
    for row in first.tolist():
        assert norm(row) == pytest.approx(1.0, abs=1e-5)
    assert alone[0].tolist() == pytest.approx(first[0].tolist(), abs=1e-5)
    assert float(first[0] @ first[1]) < 0.95


@pytest.mark.parametrize(
    "box",
    [(10.7, 20.2, 90.9, 110.5), (-5.0, -3.5, 60.0, 70.0), (250.3, 180.0, 420.0, 330.0), (0, 0, 400, 300)],
)
def test_face_crops_are_the_pixels_facenet_pytorch_extracts(box: tuple[float, float, float, float]) -> None:
    from gpu_worker.models.faces import face_pixels, import_facenet

    facenet = import_facenet()
    image = noise_crop(7, size=300).resize((400, 300))
    theirs = facenet.fixed_image_standardization(facenet.extract_face(image, box, 160))
    pixels = torch.from_numpy(face_pixels(image, box).copy()).permute(2, 0, 1).float()
    assert torch.equal((pixels - 127.5) / 128.0, theirs)


def test_greyscale_picture_without_faces_is_tagged_faces_none(analyzer: FacesAnalyzer) -> None:
    (output,) = analyzer.run([noise_crop(3, size=300).resize((400, 300)).convert("L")], {})

    assert output.payload["face_count"] == 0
    assert output.payload["faces"] == []
    assert (output.payload["image_width"], output.payload["image_height"]) == (400, 300)
    assert [tag.tag for tag in output.tags] == ["faces/none"]
    assert output.model_id == TINY_FACENET_ID


def test_image_smaller_than_the_minimum_face_size_has_no_faces(analyzer: FacesAnalyzer) -> None:
    small, large = analyzer.run([Image.new("RGB", (16, 40), "white"), noise_crop(4)], {"min_face_size": 20})

    assert small.payload["face_count"] == 0
    assert large.payload["image_width"] == 120


def test_invalid_options_are_rejected_with_a_reason(analyzer: FacesAnalyzer) -> None:
    for options in ({"min_face_size": 5}, {"min_probability": 1.5}, {"thresholds": [0.6, 0.7]}, {"colour": "red"}):
        with pytest.raises(InvalidOptionsError, match="invalid faces options"):
            analyzer.run([noise_crop(5)], options)


# the shared photos and video (real MTCNN weights; the embedder is the seeded one)


@pytest.fixture(scope="module")
def photo_outputs(analyzer: FacesAnalyzer, shared_media_folder: Path) -> dict[str, AnalyzerOutput]:
    """The shared photos analyzed together, decoded as the worker decodes them, with default options."""
    names = list(SHARED_PHOTO_FACES)
    outputs = analyzer.run([photo(shared_media_folder, name) for name in names], {})
    return dict(zip(names, outputs, strict=True))


@pytest.fixture(scope="module")
def zidane_full_size(analyzer: FacesAnalyzer, shared_media_folder: Path) -> AnalyzerOutput:
    """zidane.jpg at its full 1280x720, where MTCNN also sees two blurred faces, with ``min_probability`` 0.7."""
    (output,) = analyzer.run([photo(shared_media_folder, "zidane.jpg", max_side_px=None)], {"min_probability": 0.7})
    return output


def test_mtcnn_finds_the_faces_listed_for_the_shared_photos(photo_outputs: dict[str, AnalyzerOutput]) -> None:
    assert {name: o.payload["face_count"] for name, o in photo_outputs.items()} == SHARED_PHOTO_FACES
    for output in photo_outputs.values():
        assert output.tags[0].tag == ("faces/one" if output.payload["face_count"] == 1 else "faces/several")
        assert output.tags[1].tag == f"faces/count/{output.payload['face_count']}"
        for face in output.payload["faces"]:
            x1, y1, x2, y2 = face["box"]
            assert 0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0
            assert face["probability"] >= 0.9
            assert face["size_px"] >= 20
            assert len(face["landmarks"]) == 5
            # Eyes, nose and mouth lie inside the face's box.
            assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face["landmarks"])
            assert len(face["embedding"]) == EMBEDDING_DIM
            assert norm(face["embedding"]) == pytest.approx(1.0, abs=1e-5)
        # Largest first, by box area (the shorter side alone may order two similar faces the other way).
        areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in output.payload["faces"]]
        assert areas == sorted(areas, reverse=True)


def test_a_lower_min_probability_adds_zidanes_two_blurred_background_faces(zidane_full_size: AnalyzerOutput) -> None:
    probabilities = [face["probability"] for face in zidane_full_size.payload["faces"]]

    assert zidane_full_size.payload["face_count"] == 4
    assert len([p for p in probabilities if p >= 0.9]) == 2
    assert len([p for p in probabilities if 0.7 <= p < 0.9]) == 2


def test_boxes_and_landmarks_do_not_depend_on_the_analyzed_size(
    photo_outputs: dict[str, AnalyzerOutput], zidane_full_size: AnalyzerOutput
) -> None:
    big, small = zidane_full_size.payload, photo_outputs["zidane.jpg"].payload

    assert (big["image_width"], small["image_width"]) == (1280, DECODE_SIDE_PX)
    # The two clear faces are also the two largest; they are about the same size, so pair them by position.
    assert len(small["faces"]) == 2
    pairs = [(min(big["faces"][:2], key=lambda a: _centre_distance(a["box"], b["box"])), b) for b in small["faces"]]
    assert pairs[0][0] is not pairs[1][0]
    # MTCNN's image pyramid (steps of 0.709) meets a face at a different scale for each analyzed size, so its boxes
    # move by up to about 2 % of the image between sizes (zidane's faces: 0.5-1.8 % from 900 to 1,100 px wide).
    for a, b in pairs:
        assert a["box"] == pytest.approx(b["box"], abs=0.025)
        assert a["landmarks"] == [pytest.approx(point, abs=0.025) for point in b["landmarks"]]
    # Each face's crop at the other size embeds nearer to itself than to the other man's face.
    for own, (a, b) in enumerate(pairs):
        other = pairs[1 - own][1]
        assert dot(a["embedding"], b["embedding"]) > dot(a["embedding"], other["embedding"])


def _centre_distance(a: list[float], b: list[float]) -> float:
    return abs((a[0] + a[2]) - (b[0] + b[2])) + abs((a[1] + a[3]) - (b[1] + b[3]))


def test_embeddings_can_be_turned_off(analyzer: FacesAnalyzer, shared_media: Path) -> None:
    (output,) = analyzer.run([photo(shared_media, "grace_hopper.jpg")], {"embeddings": False})

    assert output.payload["face_count"] == 1
    assert "embedding" not in output.payload["faces"][0]


def test_each_output_belongs_to_its_image_whatever_the_batch(
    analyzer: FacesAnalyzer, photo_outputs: dict[str, AnalyzerOutput], shared_media: Path
) -> None:
    grace, bus = photo(shared_media, "grace_hopper.jpg"), photo(shared_media, "bus.jpg")

    together = analyzer.run([grace, bus, grace], {})

    assert [o.payload["face_count"] for o in together] == [1, 2, 1]
    assert together[0].payload["faces"] == together[2].payload["faces"]
    for name, output in (("grace_hopper.jpg", together[0]), ("bus.jpg", together[1])):
        for mixed, before in zip(output.payload["faces"], photo_outputs[name].payload["faces"], strict=True):
            assert mixed["box"] == before["box"]
            assert mixed["embedding"] == pytest.approx(before["embedding"], abs=1e-5)


def test_video_frames_aggregate_to_the_most_faces_with_timestamps(analyzer: FacesAnalyzer, shared_media: Path) -> None:
    frames = decode_video_frames(shared_media / "talking_zidane_bus.mp4", count=4, max_pixels=100_000_000)
    outputs = analyzer.run([frame.image for frame in frames], {})

    video = analyzer.aggregate([(f.timestamp_s, o) for f, o in zip(frames, outputs, strict=True)])

    timestamps = [f.timestamp_s for f in frames]
    per_frame = {frame["timestamp_s"]: frame["face_count"] for frame in video.payload["frames"]}
    assert list(per_frame) == timestamps
    # The first half of the clip is the zidane picture: both faces; the whole clip counts at most that many.
    assert [per_frame[t] for t in timestamps if t is not None and t < 3.8] == [2, 2]
    assert video.payload["face_count"] == max(per_frame.values()) == 2
    assert video.tags[0].tag == "faces/several"
    assert video.payload["best_frame_timestamp_s"] in timestamps[:2]
    assert len(video.payload["faces"]) == sum(per_frame.values())
    for face in video.payload["faces"]:
        assert face["timestamp_s"] == timestamps[face["frame"]]
        assert len(face["embedding"]) == EMBEDDING_DIM


def test_executor_runs_faces_and_fails_only_the_corrupt_item(
    served: Served, tmp_path: Path, shared_media: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((shared_media / "bus.jpg").read_bytes()[:2000])
    settings = served.store.settings.model_copy(update={"faces_model": TINY_FACENET_ID, "device": DeviceChoice.CPU})
    manifest = BatchManifest(
        batch_id="faces-1",
        analyzers=["faces"],
        items=[
            ManifestItem(asset_id="grace", media_kind=MediaKind.IMAGE, path=str(shared_media / "grace_hopper.jpg")),
            ManifestItem(asset_id="broken", media_kind=MediaKind.IMAGE, path=str(broken)),
        ],
    )

    result = InProcessExecutor(settings).run(manifest)

    grace, bad = result.items
    assert result.unavailable == {}
    output = grace.outputs["faces"]
    assert isinstance(output, AnalyzerOutput) and output.payload["face_count"] == 1
    assert "faces" in bad.errors and not bad.outputs
