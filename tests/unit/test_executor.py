"""The in-process executor and the decoding it relies on: per-item errors, unavailable analyzers, video and audio."""

from __future__ import annotations

import io
import math
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from gpu_worker.contract import BatchManifest, ManifestItem, MediaKind
from gpu_worker.decode import decode_image, decode_item, fitted_size
from gpu_worker.errors import DecodeError
from gpu_worker.executor import MAX_DECODE_WORKERS, InProcessExecutor, decode_worker_count
from gpu_worker.settings import WorkerSettings
from tests.fixtures.tiny_models import TINY_CLIP_ID, catalog_toml_for, draw_shape, serve_folder

SHAPES = {"clip": {"vocabulary": {"shape": ["red square", "blue circle"]}, "threshold": 0.0}}


def jpeg_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **params)
    return buffer.getvalue()


def write_mp4(path: Path, images: list[Image.Image], fps: int = 10) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = images[0].size
        stream.pix_fmt = "yuv420p"
        for image in images:
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_wav(path: Path, seconds: float = 0.5, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x00" * int(seconds * rate))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    good = jpeg_bytes(draw_shape("red", "square", size=128))
    files = {
        "good": folder / "good.jpg",
        "truncated": folder / "truncated.jpg",
        "empty": folder / "empty.jpg",
        "text": folder / "notes.jpg",
        "video": folder / "clip.mp4",
        "audio": folder / "voice.wav",
    }
    files["good"].write_bytes(good)
    files["truncated"].write_bytes(good[: len(good) // 2])
    files["empty"].write_bytes(b"")
    files["text"].write_text("these are my notes, not a picture\n", encoding="utf-8")
    red = [draw_shape("red", "square", size=64) for _ in range(10)]
    blue = [draw_shape("blue", "circle", size=64) for _ in range(10)]
    write_mp4(files["video"], red + blue)
    write_wav(files["audio"])
    return files


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory, tiny_clip_catalog: Path) -> InProcessExecutor:
    settings = WorkerSettings(
        models_dir=tmp_path_factory.mktemp("models"),
        catalog_paths=[tiny_clip_catalog],
        clip_model=TINY_CLIP_ID,
        device="cpu",
    )
    return InProcessExecutor(settings)


def item(asset_id: str, path: Path, kind: MediaKind = MediaKind.IMAGE) -> ManifestItem:
    return ManifestItem(asset_id=asset_id, media_kind=kind, path=str(path))


def test_bad_items_get_their_own_error_codes_and_the_good_one_its_output(
    executor: InProcessExecutor, media: dict[str, Path]
) -> None:
    manifest = BatchManifest(
        batch_id="b1",
        options=SHAPES,
        items=[item(name, media[name]) for name in ("good", "truncated", "empty", "text")],
    )

    result = executor.run(manifest)

    by_id = {r.asset_id: r for r in result.items}
    assert [r.asset_id for r in result.items] == ["good", "truncated", "empty", "text"]
    good = by_id["good"].outputs["clip"]
    assert good.tags[0].tag == "shape/red square"
    assert by_id["good"].errors == {}
    assert {name: by_id[name].errors["clip"].code for name in ("truncated", "empty", "text")} == {
        "truncated": "truncated",
        "empty": "empty_file",
        "text": "not_media",
    }
    assert all(by_id[name].outputs == {} for name in ("truncated", "empty", "text"))
    assert result.unavailable == {}
    assert result.device == "cpu"
    assert result.elapsed_s > 0


def test_default_executor_reads_the_tiny_model_from_gpuw_env_vars(
    tiny_clip_env: dict[str, str], media: dict[str, Path]
) -> None:
    manifest = BatchManifest(batch_id="env", options=SHAPES, items=[item("good", media["good"])])

    (result,) = InProcessExecutor().run(manifest).items

    assert result.outputs["clip"].model_id == TINY_CLIP_ID
    assert Path(tiny_clip_env["GPUW_MODELS_DIR"], TINY_CLIP_ID).is_dir()


def test_missing_weights_make_the_analyzer_unavailable_without_failing_the_batch(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        catalog_toml_for(
            "absent-clip", "https://example.invalid/m", {"w.pt": "ab" * 32}, "url", config_file=None, arch="ViT-B-32"
        ),
        encoding="utf-8",
    )
    settings = WorkerSettings(models_dir=tmp_path / "models", catalog_paths=[catalog], clip_model="absent-clip")
    manifest = BatchManifest(batch_id="b2", items=[item("good", media["good"])])

    result = InProcessExecutor(settings).run(manifest)

    assert "gpu-worker models fetch absent-clip" in result.unavailable["clip"]
    assert result.items[0].outputs == {}
    assert result.items[0].errors == {}


def test_unknown_analyzer_is_unavailable_and_the_others_still_run(
    executor: InProcessExecutor, media: dict[str, Path]
) -> None:
    manifest = BatchManifest(
        batch_id="b3", analyzers=["telepathy", "clip"], options=SHAPES, items=[item("good", media["good"])]
    )

    result = executor.run(manifest)

    assert result.unavailable["telepathy"].startswith("unknown analyzer 'telepathy'")
    assert "clip" in result.items[0].outputs


def test_video_output_aggregates_evenly_spaced_frames(executor: InProcessExecutor, media: dict[str, Path]) -> None:
    manifest = BatchManifest(batch_id="b4", options=SHAPES, items=[item("v", media["video"], MediaKind.VIDEO)])

    (result,) = executor.run(manifest).items

    output = result.outputs["clip"]
    frames = output.payload["frames"]
    timestamps = [frame["timestamp_s"] for frame in frames]
    assert len(frames) == 4
    assert timestamps == sorted(timestamps)
    assert 0.0 <= timestamps[0] < 0.5 and 1.5 <= timestamps[-1] <= 2.0
    firsts = [frame["tags"][0]["tag"] for frame in frames]
    assert firsts[0] == "shape/red square" and firsts[-1] == "shape/blue circle"
    # The video's score of a tag is its best frame's score.
    best = {tag.tag: tag.score for tag in output.tags}
    assert best["shape/red square"] == max(
        t["score"] for f in frames for t in f["tags"] if t["tag"] == "shape/red square"
    )
    assert output.embedding is not None
    assert math.isclose(math.fsum(x * x for x in output.embedding), 1.0, rel_tol=1e-5)
    assert 0.0 <= output.payload["nsfw_score"] <= 1.0


def test_audio_item_gets_no_clip_output_and_no_error(executor: InProcessExecutor, media: dict[str, Path]) -> None:
    manifest = BatchManifest(batch_id="b5", items=[item("a", media["audio"], MediaKind.AUDIO)])

    (result,) = executor.run(manifest).items

    assert result.outputs == {}
    assert result.errors == {}


def test_url_items_are_downloaded_and_checked_against_their_sha256(
    executor: InProcessExecutor, media: dict[str, Path]
) -> None:
    with serve_folder(media["good"].parent) as server:
        manifest = BatchManifest(
            batch_id="b6",
            options=SHAPES,
            items=[
                ManifestItem(asset_id="ok", media_kind=MediaKind.IMAGE, url=f"{server.base_url}/good.jpg"),
                ManifestItem(
                    asset_id="swapped", media_kind=MediaKind.IMAGE, url=f"{server.base_url}/good.jpg", sha256="0" * 64
                ),
                ManifestItem(asset_id="gone", media_kind=MediaKind.IMAGE, url=f"{server.base_url}/gone.jpg"),
            ],
        )
        ok, swapped, gone = executor.run(manifest).items

    assert ok.outputs["clip"].tags[0].tag == "shape/red square"
    assert swapped.errors["clip"].code == "checksum_mismatch"
    assert gone.errors["clip"].code == "download_failed"


def test_invalid_options_fail_every_item_of_the_batch_with_a_reason(
    executor: InProcessExecutor, media: dict[str, Path]
) -> None:
    manifest = BatchManifest(batch_id="b7", options={"clip": {"top_k": -1}}, items=[item("good", media["good"])])

    (result,) = executor.run(manifest).items

    assert result.errors["clip"].code == "invalid_options"


def test_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (2000, 1000)).save(path)

    with pytest.raises(DecodeError) as caught:
        decode_image(path, max_pixels=1_000_000)

    assert caught.value.code == "image_too_large"


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.png"
    Image.new("L", (1000, 1000)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600_000)

    with pytest.raises(DecodeError) as caught:
        decode_image(path, max_pixels=100_000_000)

    assert caught.value.code == "decompression_bomb"


def test_exif_orientation_is_applied_and_alpha_lands_on_white(tmp_path: Path) -> None:
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated.write_bytes(jpeg_bytes(Image.new("RGB", (80, 40), (200, 0, 0)), exif=exif.tobytes()))
    transparent = tmp_path / "transparent.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(transparent)

    assert decode_image(rotated, max_pixels=10_000).size == (40, 80)
    assert decode_image(transparent, max_pixels=10_000).getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("size", "side", "fitted"),
    [
        ((1920, 1080), 960, (960, 540)),
        ((810, 1080), 960, (720, 960)),
        ((500, 400), 960, (500, 400)),
        ((5000, 1), 960, (960, 1)),
    ],
)
def test_fitted_size_keeps_the_aspect_and_never_grows(
    size: tuple[int, int], side: int, fitted: tuple[int, int]
) -> None:
    assert fitted_size(size, side) == fitted


def test_a_landscape_jpeg_is_decoded_at_half_scale_close_to_a_full_decode_and_resample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    gradient = np.linspace(0, 255, 1920, dtype=np.float32)[None, :, None].repeat(1080, axis=0).repeat(3, axis=2)
    pixels = np.clip(gradient + rng.normal(0, 8, (1080, 1920, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "wide.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    drafted_sizes: list[tuple[int, int]] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self: JpegImagePlugin.JpegImageFile, *args: object, **kwargs: object) -> object:
        result = draft(self, *args, **kwargs)  # type: ignore[arg-type]
        drafted_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    drafted = decode_image(path, max_pixels=10_000_000, max_side_px=960)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    whole = decode_image(path, max_pixels=10_000_000, max_side_px=None).resize((960, 540), Image.Resampling.BICUBIC)

    assert drafted.size == (960, 540)
    # The JPEG was decoded at half scale (DCT scaling), not decoded whole and resampled.
    assert drafted_sizes == [(960, 540)]
    difference = np.abs(np.asarray(drafted, dtype=np.int16) - np.asarray(whole, dtype=np.int16))
    assert difference.mean() < 2.0


@pytest.mark.parametrize(
    ("configured", "cores", "device", "threads"),
    [
        (3, 32, "cuda", 3),
        (0, 32, "cuda", 32),
        (0, 32, "cuda:1", 32),
        (0, 32, "cpu", MAX_DECODE_WORKERS),
        (0, 2, "cpu", 2),
        (0, 0, "cpu", 1),
    ],
)
def test_decode_threads_fill_a_gpu_hosts_cores_and_leave_the_cpus_to_the_models(
    configured: int, cores: int, device: str, threads: int
) -> None:
    assert decode_worker_count(configured, cores, device) == threads


def test_heif_without_its_plugin_is_unsupported_not_garbage(tmp_path: Path) -> None:
    path = tmp_path / "phone.heic"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)

    with pytest.raises(DecodeError) as caught:
        decode_item(path, MediaKind.IMAGE, max_pixels=10_000)

    assert caught.value.code == "unsupported_format"


def test_text_file_as_video_is_not_media(media: dict[str, Path]) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_item(media["text"], MediaKind.VIDEO, max_pixels=10_000_000)

    assert caught.value.code in {"not_media", "decode_failed"}
