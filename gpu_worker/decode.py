"""Turn one file into RGB pixels for the analyzers, refusing hostile or broken input with a stable code.

Images: an empty file, a non-image, a truncated file, a header announcing too many pixels, or a decompression bomb
each raise ``DecodeError`` with their own code before (or instead of) decoding the pixels; EXIF orientation is
applied. Videos: a few frames evenly spaced in time, each with its timestamp. Audio has no pixels.
"""

from __future__ import annotations

import struct
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from PIL import Image, ImageOps, UnidentifiedImageError

from gpu_worker.contract import MediaKind
from gpu_worker.errors import DecodeError, DecodeErrorCode

# The longest side decoded images are shrunk to (WorkerSettings.max_decode_side_px): the models look at 160-640 px,
# and 960 is half of 1920 and a quarter of 3840 and 4032, so 1080p, 4K and phone JPEGs decode straight at that size
# by DCT scaling, with little or nothing left to resample.
DEFAULT_MAX_SIDE_PX = 960

try:  # HEIC/HEIF (and AVIF on older Pillow) through the pillow-heif plugin, where it is installed
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - without it such files are reported as unsupported_format
    pass
else:
    register_heif_opener()

# ISO base media brands that Pillow cannot open without the pillow-heif plugin.
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
# Warnings filters are process-wide; this lock keeps two decoding threads from racing on the one we set.
_OPEN_LOCK = threading.Lock()
# What Pillow's decoders raise on malformed data; its plugins are not all careful to raise OSError.
PIXEL_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    TypeError,
    ArithmeticError,
    LookupError,
    struct.error,
)
# Frames a video without a known duration is scanned for (about 5 minutes at 30 fps), and keyframes scanned for cuts.
MAX_SCAN_FRAMES = 10_000
# Mean absolute change between consecutive keyframes' grey thumbnails (fraction of full scale) that counts as a cut.
SCENE_CHANGE_THRESHOLD = 0.12
SCENE_THUMB_SIZE = (32, 18)


@dataclass
class Frame:
    """One picture to analyze; ``timestamp_s`` is set for video frames."""

    image: Image.Image
    timestamp_s: float | None = None
    # Each analyzer's prepared input for this picture, made on the decode thread (Analyzer.prepare).
    prepared: dict[str, Any] = field(default_factory=dict)


@dataclass
class DecodedItem:
    """What the analyzers get for one item: frames for images and videos, none for audio."""

    kind: MediaKind
    path: Path
    frames: list[Frame] = field(default_factory=list)


def decode_item(
    path: Path,
    kind: MediaKind,
    *,
    max_pixels: int,
    max_side_px: int | None = DEFAULT_MAX_SIDE_PX,
    video_frames: int = 4,
    scene_frames: int = 0,
) -> DecodedItem:
    """Decode one file by its (sniffed) media kind."""
    if kind is MediaKind.IMAGE:
        return DecodedItem(kind, path, [Frame(decode_image(path, max_pixels=max_pixels, max_side_px=max_side_px))])
    if kind is MediaKind.VIDEO:
        frames = decode_video_frames(
            path, count=video_frames, max_pixels=max_pixels, max_side_px=max_side_px, scene_frames=scene_frames
        )
        return DecodedItem(kind, path, frames)
    _require_content(path)
    return DecodedItem(kind, path)


def _require_content(path: Path) -> int:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DecodeError(DecodeErrorCode.DECODE_FAILED, f"cannot read {path.name}: {exc.strerror or exc}") from exc
    if size == 0:
        raise DecodeError(DecodeErrorCode.EMPTY_FILE, f"{path.name} is empty (0 bytes)")
    return size


def _looks_like_heif(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(12)
    return len(head) == 12 and head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def decode_image(path: Path, *, max_pixels: int, max_side_px: int | None = DEFAULT_MAX_SIDE_PX) -> Image.Image:
    """Decode an image into RGB (alpha composited on white), EXIF-rotated and shrunk to ``max_side_px``."""
    _require_content(path)
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; both are bombs to us.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(DecodeErrorCode.DECOMPRESSION_BOMB, f"{path.name}: {exc}") from exc
    except UnidentifiedImageError as exc:
        if _looks_like_heif(path):
            raise DecodeError(
                DecodeErrorCode.UNSUPPORTED_FORMAT, f"{path.name} is HEIF/AVIF; install pillow-heif to read it"
            ) from exc
        raise DecodeError(DecodeErrorCode.NOT_MEDIA, f"{path.name} is not an image Pillow can identify") from exc
    except OSError as exc:
        raise _decode_failure(path, exc) from exc

    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise DecodeError(
                DecodeErrorCode.IMAGE_TOO_LARGE,
                f"{path.name} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            )
        if max_side_px and image.format == "JPEG":
            # Decoding a JPEG at 1/2..1/8 scale is several times faster; the request is the shrunk size itself, as
            # Pillow only scales while both sides stay at least what was asked.
            image.draft("RGB", fitted_size(image.size, max_side_px))
        try:
            image.load()
        except PIXEL_ERRORS as exc:
            raise _decode_failure(path, exc) from exc
        try:
            oriented = ImageOps.exif_transpose(image)
        except PIXEL_ERRORS:
            oriented = image  # an unreadable EXIF block loses only the orientation
        try:
            rgb = _to_rgb(oriented)
        except PIXEL_ERRORS as exc:
            raise _decode_failure(path, exc) from exc
    if max_side_px:
        rgb.thumbnail((max_side_px, max_side_px), Image.Resampling.BICUBIC)
    return rgb


def fitted_size(size: tuple[int, int], max_side_px: int) -> tuple[int, int]:
    """``size`` shrunk, aspect kept, so that its longest side is at most ``max_side_px`` (never grown)."""
    width, height = size
    longest = max(width, height)
    if longest <= max_side_px:
        return width, height
    scale = max_side_px / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _decode_failure(path: Path, exc: BaseException) -> DecodeError:
    text = str(exc)
    if "truncated" in text.lower():
        return DecodeError(DecodeErrorCode.TRUNCATED, f"{path.name} is truncated: {text}")
    if "decompressed data too large" in text.lower():
        return DecodeError(DecodeErrorCode.DECOMPRESSION_BOMB, f"{path.name}: {text}")
    return DecodeError(DecodeErrorCode.DECODE_FAILED, f"{path.name} could not be decoded: {text}")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def decode_video_frames(
    path: Path,
    *,
    count: int = 4,
    max_pixels: int,
    max_side_px: int | None = DEFAULT_MAX_SIDE_PX,
    scene_frames: int = 0,
    scene_threshold: float = SCENE_CHANGE_THRESHOLD,
) -> list[Frame]:
    """Decode ``count`` frames evenly spaced in time (the middle of each of ``count`` equal spans), plus up to
    ``scene_frames`` frames where the picture changes most (scene cuts the time grid would miss), in time order."""
    _require_content(path)
    try:
        container = av.open(str(path))
    except av.error.InvalidDataError as exc:
        raise DecodeError(DecodeErrorCode.NOT_MEDIA, f"{path.name} is not a video FFmpeg can read") from exc
    except (av.FFmpegError, OSError) as exc:
        raise DecodeError(DecodeErrorCode.DECODE_FAILED, f"{path.name} could not be opened: {_reason(exc)}") from exc
    frames: list[Frame] = []
    with container:
        if not container.streams.video:
            raise DecodeError(DecodeErrorCode.NOT_MEDIA, f"{path.name} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise DecodeError(
                DecodeErrorCode.IMAGE_TOO_LARGE, f"{path.name} frames are {width}x{height}; the limit is {max_pixels}"
            )
        duration_s = _duration_s(container, stream)
        try:
            if duration_s:
                targets = [duration_s * (index + 0.5) / count for index in range(count)]
                if scene_frames > 0:
                    min_gap_s = duration_s / (2 * count)
                    for cut_s in _scene_changes(container, stream, scene_frames, scene_threshold):
                        # A cut needs a frame of its own unless the new scene is already sampled soon after it.
                        if not any(cut_s <= t < cut_s + min_gap_s for t in targets):
                            targets.append(cut_s)
                for target in sorted(targets):
                    found = _frame_at(container, stream, target)
                    if found is not None and all(found.timestamp_s != f.timestamp_s for f in frames):
                        frames.append(found)
            else:
                frames = _spread_frames(container, stream, count)
        except (av.FFmpegError, OSError, ValueError) as exc:
            if not frames:
                raise DecodeError(
                    DecodeErrorCode.DECODE_FAILED, f"{path.name}: video decoding failed: {_reason(exc)}"
                ) from exc
    if not frames:
        raise DecodeError(DecodeErrorCode.DECODE_FAILED, f"{path.name}: no video frame could be decoded")
    if max_side_px:
        for frame in frames:
            frame.image.thumbnail((max_side_px, max_side_px), Image.Resampling.BICUBIC)
    return frames


def _duration_s(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _frame_at(container: av.container.InputContainer, stream: av.VideoStream, target_s: float) -> Frame | None:
    """The first frame at or after ``target_s`` (or the last one before the end of the stream)."""
    if stream.time_base is None:
        return None
    start_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    container.seek(int((start_s + target_s) / stream.time_base), stream=stream, backward=True, any_frame=False)
    last: Frame | None = None
    for video_frame in container.decode(stream):
        time_s = (video_frame.time or 0.0) - start_s
        last = Frame(video_frame.to_image(), round(max(time_s, 0.0), 3))  # type: ignore[no-untyped-call]
        if time_s >= target_s - 1e-3:
            break
    return last


def _scene_changes(
    container: av.container.InputContainer, stream: av.VideoStream, limit: int, threshold: float
) -> list[float]:
    """Times (seconds from the start) of the ``limit`` largest picture changes between consecutive keyframes.

    Only keyframes are decoded (encoders place one at a cut), each reduced to a small grey thumbnail; a change is
    the mean absolute difference of two thumbnails as a fraction of full scale, kept when above ``threshold``.
    """
    import numpy as np

    start_s = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
    changes: list[tuple[float, float]] = []
    previous: np.ndarray | None = None
    context = stream.codec_context
    context.skip_frame = "NONKEY"
    try:
        container.seek(0, stream=stream, backward=True, any_frame=False)
        for index, video_frame in enumerate(container.decode(stream)):
            if index >= MAX_SCAN_FRAMES:
                break
            grey = video_frame.reformat(width=SCENE_THUMB_SIZE[0], height=SCENE_THUMB_SIZE[1], format="gray")
            current = grey.to_ndarray().astype(np.float32)
            if previous is not None:
                change = float(np.abs(current - previous).mean()) / 255.0
                if change > threshold:
                    changes.append((change, max((video_frame.time or 0.0) - start_s, 0.0)))
            previous = current
    finally:
        context.skip_frame = "DEFAULT"
    return sorted(time_s for _, time_s in sorted(changes, reverse=True)[:limit])


def _spread_frames(container: av.container.InputContainer, stream: av.VideoStream, count: int) -> list[Frame]:
    """Without a known duration: decode up to MAX_SCAN_FRAMES, holding a thinning, evenly spaced subset."""
    kept: list[Frame] = []
    stride = 1
    for index, video_frame in enumerate(container.decode(stream)):
        if index >= MAX_SCAN_FRAMES:
            break
        if index % stride:
            continue
        kept.append(Frame(video_frame.to_image(), video_frame.time))  # type: ignore[no-untyped-call]
        if len(kept) >= 4 * count:
            # Dropping every other kept frame and doubling the stride keeps the subset even in time and memory flat.
            kept = kept[::2]
            stride *= 2
    if len(kept) <= count:
        return kept
    step = len(kept) / count
    return [kept[int(step * (index + 0.5))] for index in range(count)]


def _reason(exc: BaseException) -> str:
    """The library's short reason without the file path that FFmpeg and OS errors embed."""
    reason = getattr(exc, "strerror", None)
    return str(reason) if reason else type(exc).__name__
