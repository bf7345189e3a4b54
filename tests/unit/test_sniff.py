"""What a file is comes from its first bytes, never from its name.

The media samples are real files written by Pillow and by PyAV's bundled FFmpeg encoders, built in memory; HEIC and
the other ISO-BMFF brands that no bundled encoder writes are built from their ``ftyp`` box.
"""

from __future__ import annotations

import inspect
import io
import struct
from collections.abc import Callable

import av
import pytest
from PIL import Image

from gpu_worker.contract import MediaKind
from gpu_worker.sniff import sniff
from tests.fixtures.factories import jpeg_bytes, png_bytes

HEAD_BYTES = 4096  # what the upload path hands to sniff()


def _pillow(fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (90, 160, 30)).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _ftyp(major_brand: bytes, *compatible: bytes) -> bytes:
    """An ISO-BMFF file that holds only its ``ftyp`` box, followed by an empty ``mdat``."""
    payload = major_brand + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(payload)) + b"ftyp" + payload + struct.pack(">I", 8) + b"mdat"


def _video(container: str, codec: str) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=10)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame(32, 32, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            output.mux(stream.encode(frame))
        output.mux(stream.encode())
    return buffer.getvalue()


def _audio(container: str, codec: str, rate: int = 48_000, options: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container, options=options or {}) as output:
        stream = output.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        samples = stream.codec_context.frame_size or 1024
        sample_format = stream.codec_context.format
        assert sample_format is not None
        for _ in range(3):
            frame = av.AudioFrame(format=sample_format.name, layout="mono", samples=samples)
            frame.rate = rate
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            output.mux(stream.encode(frame))
        output.mux(stream.encode())
    return buffer.getvalue()


MEDIA: dict[str, tuple[Callable[[], bytes], MediaKind, str]] = {
    "jpeg": (jpeg_bytes, MediaKind.IMAGE, "image/jpeg"),
    "png": (png_bytes, MediaKind.IMAGE, "image/png"),
    "gif": (lambda: _pillow("GIF"), MediaKind.IMAGE, "image/gif"),
    "webp": (lambda: _pillow("WEBP"), MediaKind.IMAGE, "image/webp"),
    "tiff little-endian": (lambda: _pillow("TIFF"), MediaKind.IMAGE, "image/tiff"),
    "tiff big-endian": (lambda: b"MM\x00*\x00\x00\x00\x08" + bytes(64), MediaKind.IMAGE, "image/tiff"),
    "avif": (lambda: _pillow("AVIF"), MediaKind.IMAGE, "image/avif"),
    "heic": (lambda: _ftyp(b"heic", b"mif1", b"heic"), MediaKind.IMAGE, "image/heic"),
    "heif (mif1)": (lambda: _ftyp(b"mif1", b"mif1"), MediaKind.IMAGE, "image/heif"),
    "mp4": (lambda: _video("mp4", "mpeg4"), MediaKind.VIDEO, "video/mp4"),
    "mov": (lambda: _video("mov", "mpeg4"), MediaKind.VIDEO, "video/quicktime"),
    "matroska": (lambda: _video("matroska", "mpeg4"), MediaKind.VIDEO, "video/x-matroska"),
    "webm": (lambda: _video("webm", "libvpx"), MediaKind.VIDEO, "video/webm"),
    "wav": (lambda: _audio("wav", "pcm_s16le", rate=16_000), MediaKind.AUDIO, "audio/wav"),
    "flac": (lambda: _audio("flac", "flac", rate=16_000), MediaKind.AUDIO, "audio/flac"),
    "ogg opus": (lambda: _audio("ogg", "libopus"), MediaKind.AUDIO, "audio/ogg"),
    "mp3 with id3": (lambda: _audio("mp3", "libmp3lame", rate=44_100), MediaKind.AUDIO, "audio/mpeg"),
    "mp3 bare frames": (
        lambda: _audio("mp3", "libmp3lame", rate=44_100, options={"id3v2_version": "0", "write_xing": "0"}),
        MediaKind.AUDIO,
        "audio/mpeg",
    ),
    "m4a": (lambda: _ftyp(b"M4A ", b"M4A ", b"mp42", b"isom"), MediaKind.AUDIO, "audio/mp4"),
}


@pytest.mark.parametrize("name", MEDIA)
def test_media_is_recognised_from_its_leading_bytes(name: str) -> None:
    make, kind, mime = MEDIA[name]
    data = make()
    if name == "mp3 bare frames":
        assert not data.startswith(b"ID3"), "the sample must exercise the frame-sync path"

    sniffed = sniff(data[:HEAD_BYTES])

    assert sniffed is not None, f"{name} was not recognised from {data[:16]!r}"
    assert (sniffed.kind, sniffed.mime) == (kind, mime)


NOT_MEDIA: dict[str, bytes] = {
    "empty": b"",
    "plain text": b"Hello, this is a note about my holiday photos.\nNothing to see here.\n",
    "utf-8 text": "Fotos vom Strand \u2013 été 2024 \u2013 東京\n".encode(),
    "html": b"<!DOCTYPE html><html><head><title>photo.jpg</title></head><body><img src=x></body></html>",
    "json": b'{"name": "photo.jpg", "size": 1234}',
    "zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(64),
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
    "shell script": b"#!/bin/sh\nrm -rf /\n",
    "windows executable": b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(64),
    "riff of another kind": b"RIFF\x24\x00\x00\x00ACONanih" + bytes(32),
    "jpeg magic cut to two bytes": b"\xff\xd8",
    "a lone byte": b"\x00",
}


@pytest.mark.parametrize("name", NOT_MEDIA)
def test_bytes_that_are_not_media_are_not_recognised(name: str) -> None:
    assert sniff(NOT_MEDIA[name]) is None


def test_text_that_starts_with_the_bmp_magic_is_not_media() -> None:
    assert sniff(b"BMW service history for the car in the photos, 2019 to 2024.\n") is None


def test_sniff_takes_only_the_bytes_so_a_name_can_never_matter() -> None:
    parameters = list(inspect.signature(sniff).parameters)

    assert parameters == ["head"]
    # The same bytes get the same answer whatever the file would have been called: there is nothing to pass.
    assert sniff(b"just text, although the upload was called photo.jpg") is None


def test_a_jpeg_is_recognised_from_its_first_4_kib_alone() -> None:
    data = jpeg_bytes(1024, 768, quality=95)
    assert len(data) > HEAD_BYTES

    sniffed = sniff(data[:HEAD_BYTES])

    assert sniffed is not None and sniffed.mime == "image/jpeg"
