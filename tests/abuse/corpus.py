"""Hostile uploads, built in code at test time (nothing binary is committed): decompression bombs, cut and polyglot
files, files that lie about their kind, hostile file names and metadata values meant to inject exiftool options.

Each :class:`Hostile` file carries what the API must answer for it at upload time (status, HTTP code, machine code),
so a test reads as the table of rules it checks.
"""

from __future__ import annotations

import io
import struct
import uuid
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.factories import jpeg_bytes

BOMB_SIDE_PX = 100_000
# One unique token in every hostile name of a run, so a walk of the filesystem finds anything named after an upload.
MARKER = f"abusemark{uuid.uuid4().hex[:8]}"

Body = bytes | Iterable[bytes]


@dataclass(frozen=True)
class Hostile:
    """One file to upload: its raw name on the wire, its bytes (or a stream of chunks), and the expected answer."""

    label: str
    name: bytes
    data: Body
    status: str  # accepted | rejected
    status_code: int
    code: str | None

    @property
    def expected(self) -> tuple[str, int, str | None]:
        """(status, HTTP code, machine code) as the upload answer lists it."""
        return self.status, self.status_code, self.code


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def giant_ihdr_png(width: int = BOMB_SIDE_PX, height: int = BOMB_SIDE_PX) -> bytes:
    """A well-formed PNG (valid CRCs) of a few dozen bytes whose IHDR claims ``width`` x ``height`` 1-bit pixels:
    10^10 pixels by default, 1.25 GB once decoded. Its IDAT holds one compressed scanline; a decoder that trusts
    the header allocates first and finds out later."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    scanline = zlib.compress(b"\x00" + bytes((width + 7) // 8), 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", scanline) + _png_chunk(b"IEND", b"")


def half_jpeg(seed: int = 0) -> bytes:
    """A real photo-sized JPEG cut in half: the header is intact, the picture data ends early."""
    whole = jpeg_bytes(640, 480, (10 + seed, 120, 200), quality=95)
    return whole[: len(whole) // 2]


def zip_archive() -> bytes:
    """A small ZIP with a script and a page in it (what a polyglot would smuggle)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("run.sh", "#!/bin/sh\necho owned > /tmp/owned\n")
        archive.writestr("index.html", "<script>alert(document.cookie)</script>")
    return buffer.getvalue()


def jpeg_then_zip() -> bytes:
    """A valid JPEG with a ZIP appended: image viewers show the photo, unzip finds the archive."""
    data = jpeg_bytes(64, 48, (1, 2, 3)) + zip_archive()
    assert zipfile.is_zipfile(io.BytesIO(data)), "the polyglot must really be a ZIP as well"
    return data


def zip_then_jpeg() -> bytes:
    """A ZIP first, a JPEG after it: an archive that carries a photo."""
    return zip_archive() + jpeg_bytes(64, 48, (4, 5, 6))


def html_page() -> bytes:
    """An HTML page with a script, to be named .jpg."""
    return b"<!DOCTYPE html><html><body><script>fetch('/api/v1/jobs').then(r=>r.text()).then(alert)</script>"


def djvu_document() -> bytes:
    """The start of a DjVu document (``AT&TFORM`` ... ``DJVU``): the format of old ImageMagick/ghostscript exploits."""
    info = struct.pack(">HHBBHB", 100, 100, 24, 0, 300, 22)
    form = b"DJVU" + b"INFO" + struct.pack(">I", len(info)) + info
    return b"AT&TFORM" + struct.pack(">I", len(form)) + form


def stream_of(total_bytes: int, chunk_bytes: int = 256 * 1024, head: bytes = b"\xff\xd8\xff\xe0") -> Iterator[bytes]:
    """``total_bytes`` generated chunk by chunk (never held whole): a JPEG signature, then filler."""
    yield head
    sent = len(head)
    block = bytes(chunk_bytes)
    while sent < total_bytes:
        piece = block[: min(chunk_bytes, total_bytes - sent)]
        sent += len(piece)
        yield piece


def hostile_files(*, limit_bytes: int) -> list[Hostile]:
    """Every hostile file of the corpus with the answer due for it; the oversized one streams twice the limit."""
    marker = MARKER.encode()
    return [
        Hostile("giant IHDR PNG", b"bomb-" + marker + b".png", giant_ihdr_png(), "rejected", 422, "decompression_bomb"),
        # The header is fine, so the upload is accepted; the prepare step finds the cut (see the pipeline test).
        Hostile("JPEG cut in half", b"half-" + marker + b".jpg", half_jpeg(), "accepted", 201, None),
        Hostile("JPEG with a ZIP appended", b"poly-" + marker + b".jpg", jpeg_then_zip(), "accepted", 201, None),
        Hostile(
            "ZIP with a JPEG appended", b"zipfirst-" + marker + b".jpg", zip_then_jpeg(), "rejected", 415, "not_media"
        ),
        Hostile("HTML named .jpg", b"page-" + marker + b".jpg", html_page(), "rejected", 415, "not_media"),
        Hostile("DjVu named .jpg", b"djvu-" + marker + b".jpg", djvu_document(), "rejected", 415, "not_media"),
        Hostile("0-byte file", b"empty-" + marker + b".jpg", b"", "rejected", 422, "empty_file"),
        Hostile(
            "stream over the limit",
            b"huge-" + marker + b".jpg",
            stream_of(2 * limit_bytes),
            "rejected",
            413,
            "file_too_large",
        ),
    ]


@dataclass(frozen=True)
class HostileName:
    """A file name as sent on the wire and the display name the API must show for it."""

    label: str
    raw: bytes
    shown: str


def hostile_names() -> list[HostileName]:
    """File names that try to leave the store, hide their extension, break logs or headers, or exhaust memory."""
    m = MARKER
    long_name = ("\u6771" * 3000 + m + "x" * 1000) + ".jpg"  # 4000 characters, 10 kB of UTF-8
    return [
        HostileName("parent dirs", f"../../../../tmp/{m}-up.jpg".encode(), f"{m}-up.jpg"),
        HostileName("absolute path", f"/etc/cron.d/{m}-abs.jpg".encode(), f"{m}-abs.jpg"),
        HostileName("backslash parents", f"..\\..\\..\\{m}-bs.jpg".encode(), f"{m}-bs.jpg"),
        HostileName("Windows drive", f"C:\\Windows\\System32\\{m}-drive.jpg".encode(), f"{m}-drive.jpg"),
        HostileName("UNC path", f"\\\\server\\share\\{m}-unc.jpg".encode(), f"{m}-unc.jpg"),
        HostileName("NUL byte", f"{m}-nul\x00.php.jpg".encode(), f"{m}-nul.php.jpg"),
        HostileName("newline", f"{m}-nl\n-overwrite_original.jpg".encode(), f"{m}-nl-overwrite_original.jpg"),
        HostileName("right-to-left override", f"{m}-rtl\u202egpj.exe".encode(), f"{m}-rtlgpj.exe"),
        HostileName("only dots", b"..", "unnamed"),
        HostileName("10 kB name", long_name.encode(), long_name[:196] + ".jpg"),
    ]


def exiftool_injections(secret: Path) -> list[str]:
    """Values a tenant controls (tag labels, person names) that would be exiftool options or file reads if they
    became arguments: new lines that start an option, argument files, copies from other files, output files."""
    m = MARKER
    return [
        "\n-overwrite_original\n",
        f"x\n-tagsFromFile\n{secret}",
        f"-tagsFromFile {secret}",
        f"-@ {secret}",
        "-execute",
        f"-o /tmp/{m}-o.jpg",
        f"-w! /tmp/{m}-w.txt",
        "-if 1 -delete_original!",
        "-all=",
        f"<={secret}",
        f"={secret}",
        f"${{{secret}}}",
        "$HOME @argfile",
        "#[CSTR]-execute",
        " -leading-space",
    ]


def multipart_stream(parts: list[tuple[bytes, Body]], boundary: str) -> Iterator[bytes]:
    """A multipart/form-data body (file fields named ``files``), produced piece by piece; a part's data may itself
    be a stream. Names go on the wire as raw bytes, as an attacker sends them."""
    for filename, data in parts:
        yield (
            f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="files"; filename="'
            + filename
            + b'"\r\nContent-Type: image/jpeg\r\n\r\n'
        )
        if isinstance(data, bytes):
            yield data
        else:
            yield from data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()
