"""CPU-side checks and previews of stored media: image header limits, full decode, video/audio probe, thumbnails.

Every failure is a :class:`ProbeError` with a stable code; nothing here trusts the file.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from gpu_worker.contract import MediaKind

THUMBNAIL_PX = 320

log = logging.getLogger(__name__)

try:  # HEIC/HEIF photos (the iPhone default) decode through the pillow-heif plugin
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - pillow-heif is a base dependency; a trimmed install still runs without HEIC
    pass
else:
    register_heif_opener()


class ProbeError(Exception):
    """A file failed a check; ``code`` is stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ProbeInfo:
    """What the probe learned, and a JPEG thumbnail when one could be made."""

    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    thumbnail_jpeg: bytes | None = None


def check_image_header(path: Path, *, max_pixels: int) -> tuple[int, int]:
    """Read only the header: refuse decompression bombs (Pillow's check) and images over ``max_pixels``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _failed(
                "decompression_bomb", "refused as a decompression bomb (its pixel count is absurd)", exc
            ) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise _failed("decode_failed", "not a readable image", exc) from exc
    if width * height > max_pixels:
        raise ProbeError(
            "image_too_large",
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
        )
    return width, height


def probe_image(path: Path, *, max_pixels: int) -> ProbeInfo:
    """Fully decode an image (catching truncation) and make its thumbnail."""
    width, height = check_image_header(path, max_pixels=max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                image.load()
                oriented = ImageOps.exif_transpose(image)
                preview = oriented.convert("RGB")
        except OSError as exc:
            if "truncated" in str(exc).lower():
                raise _failed(
                    "truncated", "the image is truncated: its data ends before the picture does", exc
                ) from exc
            raise _failed("decode_failed", "the image could not be decoded", exc) from exc
        except (SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
            raise _failed("decode_failed", "the image could not be decoded", exc) from exc
    preview.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    return ProbeInfo(width=width, height=height, thumbnail_jpeg=_jpeg(preview))


def probe_av(path: Path, kind: MediaKind, *, max_pixels: int) -> ProbeInfo:
    """Probe a video or audio container with PyAV; a video gets a thumbnail from its first decodable frame."""
    import av  # PyAV bundles FFmpeg, so this works on every platform without a system install

    try:
        with av.open(str(path)) as container:
            duration = float(container.duration) / 1_000_000 if container.duration else None
            info = ProbeInfo(duration_s=duration)
            if kind == MediaKind.AUDIO:
                if not container.streams.audio:
                    raise ProbeError("decode_failed", "no audio stream found")
                return info
            if not container.streams.video:
                raise ProbeError("decode_failed", "no video stream found")
            stream = container.streams.video[0]
            info.width, info.height = stream.codec_context.width, stream.codec_context.height
            if info.width and info.height and info.width * info.height > max_pixels:
                raise ProbeError("image_too_large", f"video frames of {info.width}x{info.height} exceed the limit")
            for frame in container.decode(stream):
                image = frame.to_image()  # type: ignore[no-untyped-call]
                image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                info.thumbnail_jpeg = _jpeg(image)
                break
            return info
    except ProbeError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise _failed("decode_failed", "the file could not be decoded", exc) from exc


def probe(path: Path, kind: MediaKind, *, max_pixels: int) -> ProbeInfo:
    """Check and preview a stored file of a known kind."""
    if kind == MediaKind.IMAGE:
        return probe_image(path, max_pixels=max_pixels)
    return probe_av(path, kind, max_pixels=max_pixels)


def _failed(code: str, message: str, exc: BaseException) -> ProbeError:
    """A ProbeError with a fixed message; the library's text names server paths, so it goes to the log only."""
    log.info("probe %s: %s: %s", code, type(exc).__name__, exc)
    return ProbeError(code, message)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
