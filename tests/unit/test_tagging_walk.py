"""Walking a folder for tagging: media found by their bytes, in a fixed order, our own files and hidden ones left
out."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from gpu_worker.contract import MediaKind
from gpu_worker.tagging.walk import hash_file, walk_media
from tests.fixtures.factories import jpeg_bytes, png_bytes

PICTURES = {MediaKind.IMAGE, MediaKind.VIDEO}


def webp_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "green").save(buffer, "WEBP")
    return buffer.getvalue()


def wav_bytes() -> bytes:
    return b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    files = {
        "b.jpg": jpeg_bytes(),
        "a.png": png_bytes(),
        "Z/inner.webp": webp_bytes(),
        "Z/deeper/clip.mp4": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64),
        "no-extension": jpeg_bytes(),
        "disguised.dat": png_bytes(),
        "notes.jpg": b"these are notes, not a picture\n",
        "voice.wav": wav_bytes(),
        # Ours, or nobody's photos:
        "b.jpg.orig": jpeg_bytes(),
        "b.jpg.ai.json": b"{}",
        "b.jpg.xmp": b"<x:xmpmeta/>",
        ".hidden.jpg": jpeg_bytes(),
        ".ai-media-analysis/checkpoint.jpg": jpeg_bytes(),
        ".thumbnails/t.jpg": jpeg_bytes(),
        "@eaDir/b.jpg/SYNOPHOTO_THUMB_M.jpg": jpeg_bytes(),
    }
    for name, data in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path


def test_media_are_found_by_their_bytes_in_sorted_order(tree: Path) -> None:
    result = walk_media(tree, PICTURES)

    assert [(f.relative, f.kind, f.mime) for f in result.files] == [
        ("Z/deeper/clip.mp4", MediaKind.VIDEO, "video/mp4"),
        ("Z/inner.webp", MediaKind.IMAGE, "image/webp"),
        ("a.png", MediaKind.IMAGE, "image/png"),
        ("b.jpg", MediaKind.IMAGE, "image/jpeg"),
        ("disguised.dat", MediaKind.IMAGE, "image/png"),
        ("no-extension", MediaKind.IMAGE, "image/jpeg"),
    ]
    assert result.problems == []
    assert all(f.path == tree / f.relative for f in result.files)


def test_only_the_kinds_asked_for_are_returned(tree: Path) -> None:
    audio = walk_media(tree, {MediaKind.AUDIO})

    assert [f.relative for f in audio.files] == ["voice.wav"]


@pytest.mark.skipif(os.name == "nt", reason="creating symbolic links needs a privilege on Windows")
def test_symbolic_links_are_not_followed(tree: Path) -> None:
    (tree / "link.jpg").symlink_to(tree / "b.jpg")
    (tree / "loop").symlink_to(tree, target_is_directory=True)

    relatives = [f.relative for f in walk_media(tree, PICTURES).files]

    assert "link.jpg" not in relatives
    assert not any(r.startswith("loop/") for r in relatives)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_folder_is_reported_and_the_walk_goes_on(tree: Path) -> None:
    locked = tree / "Z" / "deeper"
    locked.chmod(0)
    try:
        result = walk_media(tree, PICTURES)
    finally:
        locked.chmod(0o755)

    assert [p.relative for p in result.problems] == ["Z/deeper"]
    assert "b.jpg" in [f.relative for f in result.files]


def test_hash_file_is_the_sha256_of_the_content(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)

    assert hash_file(path) == hashlib.sha256(data).hexdigest()
