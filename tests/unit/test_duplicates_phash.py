"""The perceptual hash: copies that look the same stay within a few bits; different pictures are far apart."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from orchestrator.duplicates.phash import (
    FLAT_HASH,
    HASH_HEX_CHARS,
    PerceptualHashError,
    hamming,
    parse_hash,
    phash_bytes,
    phash_image,
)

PHOTOS = ("bus.jpg", "zidane.jpg", "grace_hopper.jpg")


def _jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _photo(media: Path, name: str) -> Image.Image:
    with Image.open(media / name) as image:
        return image.convert("RGB")


def _smooth_picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A generated picture with coarse structure: random colours on a 8x6 grid, smoothly interpolated."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)


def _variants(photo: Image.Image) -> dict[str, Image.Image]:
    width, height = photo.size
    return {
        "resized to half": photo.resize((width // 2, height // 2), Image.Resampling.BICUBIC),
        "re-encoded at JPEG quality 60": Image.open(io.BytesIO(_jpeg(photo, quality=60))),
        "brightened by 10 %": ImageEnhance.Brightness(photo).enhance(1.1),
        "cropped by 5 %": photo.crop((width // 40, height // 40, width - width // 40, height - height // 40)),
    }


@pytest.mark.parametrize("name", PHOTOS)
def test_resized_reencoded_brightened_and_cropped_copies_are_within_8_bits(shared_media: Path, name: str) -> None:
    photo = _photo(shared_media, name)
    original = phash_image(photo)

    distances = {label: hamming(original, phash_image(copy)) for label, copy in _variants(photo).items()}

    assert all(d <= 8 for d in distances.values()), distances
    assert distances["re-encoded at JPEG quality 60"] <= 3
    assert distances["resized to half"] <= 3


def test_different_photos_are_more_than_20_bits_apart(shared_media: Path) -> None:
    hashes = [phash_image(_photo(shared_media, name)) for name in PHOTOS]

    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]

    assert min(distances) > 20, distances


def test_unrelated_generated_pictures_are_far_apart() -> None:
    pictures = [_smooth_picture(seed) for seed in range(8)]
    hashes = [phash_image(picture) for picture in pictures]

    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]

    assert min(distances) > 16, distances


def test_a_hash_is_16_lowercase_hex_digits_and_identical_for_the_same_picture() -> None:
    picture = _smooth_picture(1, (120, 90))

    first, second = phash_image(picture), phash_bytes(_jpeg(picture, quality=95))

    assert len(first) == HASH_HEX_CHARS and first == first.lower() and int(first, 16) > 0
    assert hamming(first, second) <= 2
    assert hamming(first, first) == 0


def test_a_featureless_picture_gets_the_flat_hash_whatever_its_colour() -> None:
    black, white = Image.new("RGB", (64, 48), (0, 0, 0)), Image.new("RGB", (640, 480), (250, 250, 250))

    assert phash_image(black) == phash_image(white) == FLAT_HASH


def test_the_brightness_of_a_picture_is_not_part_of_its_hash() -> None:
    picture = _smooth_picture(2)
    darker = Image.eval(picture, lambda v: v // 2)

    assert hamming(phash_image(picture), phash_image(darker)) <= 2


def test_hamming_counts_differing_bits() -> None:
    assert hamming("0000000000000000", "ffffffffffffffff") == 64
    assert hamming("8000000000000001", "0000000000000000") == 2
    assert hamming("ABCDEF0123456789", "abcdef0123456789") == 0


@pytest.mark.parametrize(
    "bad", ["", "123", "0x00000000000000", "zzzzzzzzzzzzzzzz", "0000000000000000 ", "+000000000000000"]
)
def test_anything_but_16_hex_digits_is_refused(bad: str) -> None:
    with pytest.raises(PerceptualHashError):
        parse_hash(bad)


def test_bytes_that_are_no_picture_are_refused() -> None:
    with pytest.raises(PerceptualHashError):
        phash_bytes(b"not a picture at all")
