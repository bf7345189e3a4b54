"""Face thumbnails for display: a face's box, with a margin, cut from its asset's stored image (a video's thumbnail)
and scaled to at most ``CROP_MAX_PX`` on its longer side, as JPEG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from orchestrator.errors import NotFoundError

CROP_MAX_PX = 160
# Share of the box's size added on every side, so hair and chin are in the picture.
CROP_MARGIN = 0.25
JPEG_QUALITY = 85
# Decompression-bomb guard for the source picture (pixels); uploads are already limited, this bounds the work here.
MAX_SOURCE_PIXELS = 100_000_000


def crop_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """A normalised (x1, y1, x2, y2) face box grown by the margin, in pixels, inside the picture, at least 1 px."""
    x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    grow_x, grow_y = (x2 - x1) * CROP_MARGIN, (y2 - y1) * CROP_MARGIN
    left = round(max(0.0, x1 - grow_x) * width)
    top = round(max(0.0, y1 - grow_y) * height)
    right = max(left + 1, min(width, round(min(1.0, x2 + grow_x) * width)))
    bottom = max(top + 1, min(height, round(min(1.0, y2 + grow_y) * height)))
    return left, top, right, bottom


def face_crop_jpeg(source: Path, box: Sequence[float]) -> bytes:
    """The face as a JPEG of at most ``CROP_MAX_PX`` px; NotFoundError when the picture cannot be read."""
    try:
        with Image.open(source) as image:
            if image.width * image.height > MAX_SOURCE_PIXELS:
                raise NotFoundError("this picture is too large to crop a face from")
            picture = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise NotFoundError("no picture to crop this face from") from exc
    face = picture.crop(crop_box(box, picture.width, picture.height))
    face.thumbnail((CROP_MAX_PX, CROP_MAX_PX))
    out = io.BytesIO()
    face.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
