"""What a file is, from its first bytes, never from its name. Pure Python: the orchestrator's upload checks and the
worker's folder mode share it."""

from __future__ import annotations

from dataclasses import dataclass

from gpu_worker.contract import MediaKind

# Enough for every signature below (MPEG-TS needs byte 188).
SNIFF_BYTES = 4096


@dataclass(frozen=True)
class Sniffed:
    """The media kind and MIME type recognised from a file's leading bytes."""

    kind: MediaKind
    mime: str


_ISO_BMFF_BRANDS: dict[bytes, Sniffed] = {
    b"heic": Sniffed(MediaKind.IMAGE, "image/heic"),
    b"heix": Sniffed(MediaKind.IMAGE, "image/heic"),
    b"hevc": Sniffed(MediaKind.IMAGE, "image/heic"),
    b"heim": Sniffed(MediaKind.IMAGE, "image/heic"),
    b"heis": Sniffed(MediaKind.IMAGE, "image/heic"),
    b"mif1": Sniffed(MediaKind.IMAGE, "image/heif"),
    b"msf1": Sniffed(MediaKind.IMAGE, "image/heif"),
    b"avif": Sniffed(MediaKind.IMAGE, "image/avif"),
    b"avis": Sniffed(MediaKind.IMAGE, "image/avif"),
    b"qt  ": Sniffed(MediaKind.VIDEO, "video/quicktime"),
    b"M4A ": Sniffed(MediaKind.AUDIO, "audio/mp4"),
    b"M4B ": Sniffed(MediaKind.AUDIO, "audio/mp4"),
    b"3gp4": Sniffed(MediaKind.VIDEO, "video/3gpp"),
    b"3gp5": Sniffed(MediaKind.VIDEO, "video/3gpp"),
}
# The DIB header sizes that real bitmaps use (BITMAPCOREHEADER … BITMAPV5HEADER); "BM" alone is too common in text.
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_MP4 = Sniffed(MediaKind.VIDEO, "video/mp4")


def sniff(head: bytes) -> Sniffed | None:
    """Recognise an image, video or audio container from its first bytes; None if it is not media."""
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed(MediaKind.IMAGE, "image/jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed(MediaKind.IMAGE, "image/png")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed(MediaKind.IMAGE, "image/gif")
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return Sniffed(MediaKind.IMAGE, "image/tiff")
    if head.startswith(b"BM") and len(head) >= 18 and head[6:10] == b"\0\0\0\0" and head[14] in _BMP_HEADER_SIZES:
        return Sniffed(MediaKind.IMAGE, "image/bmp")
    if head.startswith(b"RIFF") and len(head) >= 12:
        return _riff(head[8:12])
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _ISO_BMFF_BRANDS.get(head[8:12], _MP4)
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed(MediaKind.VIDEO, "video/webm" if b"webm" in head[:64] else "video/x-matroska")
    if head.startswith(b"fLaC"):
        return Sniffed(MediaKind.AUDIO, "audio/flac")
    if head.startswith(b"OggS"):
        return Sniffed(MediaKind.AUDIO, "audio/ogg")
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06):
        return Sniffed(MediaKind.AUDIO, "audio/mpeg")
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return Sniffed(MediaKind.VIDEO, "video/mp2t")
    return None


def _riff(fourcc: bytes) -> Sniffed | None:
    return {
        b"WEBP": Sniffed(MediaKind.IMAGE, "image/webp"),
        b"WAVE": Sniffed(MediaKind.AUDIO, "audio/wav"),
        b"AVI ": Sniffed(MediaKind.VIDEO, "video/x-msvideo"),
    }.get(fourcc)
