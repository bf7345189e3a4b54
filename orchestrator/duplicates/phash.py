"""A 64-bit DCT perceptual hash (pHash) of a picture, and the Hamming distance between two hashes.

The picture is reduced to 32x32 grey levels by area averaging; its 2-D DCT-II concentrates the coarse structure in
the low frequencies. Each coefficient of the top-left 8x8 block becomes one bit: above the median of the block's 63
AC terms or not. The DC term (mean brightness) takes no part: its bit is always 0, so a brightened copy hashes the
same. Resizing, re-encoding, small brightness changes and crops of a few per cent keep the coarse structure, so they
flip only a few bits (measured in ``docs/duplicates.md``); different pictures differ in about half of them.

The block ``[0:8, 0:8]`` (as the imagehash library uses) was chosen over pHash.org's ``[1:9, 1:9]``: on our sample
photos a 5 % crop flipped 2-8 bits with it and 4-16 with the other, while unrelated photos stayed 26-34 bits apart
with both.
"""

from __future__ import annotations

import io
import re
from functools import cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image

HASH_BITS = 64
HASH_HEX_CHARS = HASH_BITS // 4
SIDE_PX = 32
BLOCK = 8
HASH_PATTERN = re.compile(r"[0-9a-fA-F]{16}")
# A featureless picture (a black video frame, a blank page) has no structure to hash: its DCT terms are rounding
# noise. It gets this hash, which a real picture never has (the median threshold sets about half the bits), and is
# left out of hash comparisons; otherwise every black first frame would match every other.
FLAT_HASH = "0" * HASH_HEX_CHARS
# Standard deviation of the 32x32 grey levels (0-255) below which a picture counts as featureless.
FLAT_STD_LEVELS = 1.0


class PerceptualHashError(ValueError):
    """A value that is not a 16-hex-digit perceptual hash, or bytes that are not a picture."""


@cache
def _dct_matrix(n: int) -> NDArray[np.float64]:
    """The orthonormal DCT-II matrix: ``C @ x`` transforms a column vector ``x`` of length ``n``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix: NDArray[np.float64] = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0, :] /= np.sqrt(2.0)
    return matrix


def phash_image(image: Image.Image) -> str:
    """The perceptual hash of a picture as 16 hex digits (the first digit holds the first coefficient's bit)."""
    grey = image.convert("L").resize((SIDE_PX, SIDE_PX), Image.Resampling.BOX)
    pixels = np.asarray(grey, dtype=np.float64)
    if float(pixels.std()) < FLAT_STD_LEVELS:
        return FLAT_HASH
    dct = _dct_matrix(SIDE_PX)
    coefficients = (dct @ pixels @ dct.T)[:BLOCK, :BLOCK].ravel()
    bits = coefficients > np.median(coefficients[1:])
    bits[0] = False
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return f"{value:0{HASH_HEX_CHARS}x}"


def phash_bytes(data: bytes) -> str:
    """The perceptual hash of an encoded picture (JPEG, PNG, ...); PerceptualHashError when it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return phash_image(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PerceptualHashError(f"not a decodable picture: {type(exc).__name__}") from exc


def parse_hash(text: str) -> int:
    """A hash as a 64-bit integer; PerceptualHashError for anything but 16 hex digits."""
    if HASH_PATTERN.fullmatch(text) is None:
        raise PerceptualHashError(f"{text[:40]!r} is not a perceptual hash ({HASH_HEX_CHARS} hex digits)")
    return int(text, 16)


def hamming(a: str, b: str) -> int:
    """How many of the 64 bits differ between two hashes (0: same picture structure; about 32: unrelated)."""
    return (parse_hash(a) ^ parse_hash(b)).bit_count()
