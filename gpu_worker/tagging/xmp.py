"""Write keywords into a media file or its ``.xmp`` sidecar with exiftool, never corrupting what is there.

Every write goes to a temporary copy beside the target (hashed while copying, so a file that changed since it was
analyzed is left alone), is edited there by exiftool, and must then read back: the keyword lists exiftool reads are
exactly the planned ones, the size moved by no more than metadata can explain, and the pictures (or the video and
audio streams) decode the same as the original's. Only then does an atomic rename (os.replace) swap it in; with
``backup`` the first original is kept as ``name.orig``. Any failure deletes the copy and leaves the original as it
was. Formats exiftool cannot write (BMP, WAV, Matroska, MP3, ...) get a sidecar instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from gpu_worker.contract import MediaKind
from gpu_worker.decode import decode_image
from gpu_worker.errors import DecodeError
from gpu_worker.tagging.errors import ExifToolError, WriteVerificationError
from gpu_worker.tagging.exiftool import ExifTool, path_argument
from gpu_worker.tagging.keywords import KeywordEdit, Keywords, TagMode, XmpField, plan_edit
from gpu_worker.tagging.layout import TempRegistry, WriteTarget, backup_path, temp_path_for, xmp_sidecar_path
from gpu_worker.tagging.walk import HASH_CHUNK_BYTES, MediaFile

log = logging.getLogger(__name__)

# Formats exiftool writes XMP into (by sniffed MIME type); everything else gets a sidecar.
EMBEDDABLE_MIMES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/tiff",
        "image/webp",
        "image/gif",
        "image/heic",
        "image/heif",
        "image/avif",
        "video/mp4",
        "video/quicktime",
        "video/3gpp",
        "audio/mp4",
    }
)
# Keywords are a few KiB; a rewrite that grows or shrinks a file by more than this (plus 1 %) damaged something.
SIZE_SLACK_BYTES = 1024 * 1024
# Pictures are compared at this size: enough to see damage, cheap for JPEG (decoded at 1/8 scale).
VERIFY_SIDE_PX = 256
# exiftool needs its large-file switch for videos over 2 GiB; it is harmless below.
WRITE_OPTIONS = ("-overwrite_original", "-api", "LargeFileSupport=1")
EXIFTOOL_SECONDS_PER_GIB = 60.0


@dataclass(frozen=True)
class WriteReport:
    """What a write did: where the keywords are, whether anything changed, and the media file's hash after it."""

    keywords_in: Path | None
    changed: bool
    final_sha256: str
    keywords: dict[XmpField, list[str]]


class XmpWriter:
    """Edits keywords in files and sidecars through one exiftool process; used from one thread at a time."""

    def __init__(
        self,
        exiftool: ExifTool,
        registry: TempRegistry,
        *,
        mode: TagMode,
        backup: bool = False,
        max_pixels: int = 100_000_000,
    ) -> None:
        self.exiftool = exiftool
        self.registry = registry
        self.mode = mode
        self.backup = backup
        self.max_pixels = max_pixels

    def write(
        self,
        media: MediaFile,
        keywords: Keywords,
        *,
        target: WriteTarget,
        expected_sha256: str,
        before_replace: Callable[[str], None],
    ) -> WriteReport:
        """Write ``keywords`` for ``media``: into the file when ``target`` is XMP and the format allows, else into its
        sidecar. ``expected_sha256`` is the content that was analyzed: a file that no longer has it is left alone.
        ``before_replace(final_sha256)`` runs just before a tagged copy replaces the media file."""
        if target is WriteTarget.XMP and media.mime in EMBEDDABLE_MIMES:
            return self.write_embedded(media, keywords, expected_sha256=expected_sha256, before_replace=before_replace)
        return self.write_sidecar(media, keywords, expected_sha256=expected_sha256)

    def write_embedded(
        self, media: MediaFile, keywords: Keywords, *, expected_sha256: str, before_replace: Callable[[str], None]
    ) -> WriteReport:
        """Edit the keywords inside the media file itself."""
        existing = self.exiftool.read_keywords(media.path)
        edit = plan_edit(existing, keywords, self.mode)
        if not edit.changed:
            return WriteReport(media.path, False, expected_sha256, _sorted(edit))
        with self._temporary(media.path) as temp:
            before = media.path.stat()
            if _copy_hashing(media.path, temp) != expected_sha256:
                raise WriteVerificationError(f"{media.path.name} changed since it was analyzed; left as it is")
            self._apply(edit, temp, size=before.st_size)
            self._verify(temp, media, edit, original_size=before.st_size)
            final_sha256 = _sha256(temp)
            _fsync(temp)
            _match_owner_and_mode(media.path, temp)  # after the fsync: a read-only mode would stop us opening it
            after = media.path.stat()
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise WriteVerificationError(f"{media.path.name} changed while it was being tagged; left as it is")
            before_replace(final_sha256)
            if self.backup:
                self._backup(media.path)
            temp.replace(media.path)
            _fsync_dir(media.path.parent)
        return WriteReport(media.path, True, final_sha256, _sorted(edit))

    def write_sidecar(self, media: MediaFile, keywords: Keywords, *, expected_sha256: str) -> WriteReport:
        """Edit (or create) ``name.ext.xmp``; a new sidecar starts with the keywords the media file already holds."""
        sidecar = xmp_sidecar_path(media.path)
        exists = sidecar.is_file()
        existing = self.exiftool.read_keywords(sidecar if exists else media.path)
        edit = plan_edit(existing, keywords, self.mode)
        if not edit.changed and (exists or not any(existing.values())):
            return WriteReport(sidecar if exists else None, False, expected_sha256, _sorted(edit))
        with self._temporary(sidecar) as temp:
            if exists:
                shutil.copyfile(sidecar, temp)
            elif any(existing.values()):
                self._seed(media.path, temp)
            self._apply(edit, temp, size=0)
            readback = self.exiftool.read_keywords(temp)
            _check_keywords(readback, edit, temp.name)
            _fsync(temp)
            if self.backup and exists:
                self._backup(sidecar)
            temp.replace(sidecar)
            _fsync_dir(sidecar.parent)
        return WriteReport(sidecar, True, expected_sha256, _sorted(edit))

    # steps

    @contextlib.contextmanager
    def _temporary(self, target: Path) -> Iterator[Path]:
        temp = temp_path_for(target)
        self.registry.add_pending(temp)
        try:
            yield temp
        finally:
            for leftover in (temp, temp.with_name(temp.name + "_exiftool_tmp")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            self.registry.remove_pending(temp)

    def _seed(self, media: Path, temp: Path) -> None:
        """Start a new sidecar from the media file's own XMP packet (what digiKam and darktable keep there too).

        Not ``-tagsFromFile``: exiftool reads its argument as a name pattern when the path holds ``%d``, ``%f``, ...
        """
        result = self.exiftool.execute(["-b", "-XMP", path_argument(media)])
        if result.status != 0:
            raise ExifToolError(f"exiftool cannot read the XMP of {media.name}: {result.error}")
        if result.output.strip():
            with temp.open("xb") as handle:
                handle.write(result.output)

    def _apply(self, edit: KeywordEdit, temp: Path, *, size: int) -> None:
        arguments: list[str] = []
        for field in XmpField:
            arguments += [f"-{field}-={value}" for value in edit.removals[field]]
            for value in edit.additions[field]:
                # "-=" then "+=" of one value adds it only where it is missing (exiftool's idiom against duplicates).
                arguments += [f"-{field}-={value}", f"-{field}+={value}"]
        timeout_s = self.exiftool.timeout_s + EXIFTOOL_SECONDS_PER_GIB * size / 1024**3
        result = self.exiftool.execute([*arguments, *WRITE_OPTIONS, path_argument(temp)], timeout_s=timeout_s)
        if result.status != 0:
            raise ExifToolError(f"exiftool could not write the keywords: {result.error}")

    def _verify(self, temp: Path, media: MediaFile, edit: KeywordEdit, *, original_size: int) -> None:
        size = temp.stat().st_size
        if size == 0 or abs(size - original_size) > SIZE_SLACK_BYTES + original_size // 100:
            raise WriteVerificationError(f"the tagged copy of {media.path.name} is {size} bytes, was {original_size}")
        _check_keywords(self.exiftool.read_keywords(temp), edit, media.path.name)
        if media.kind is MediaKind.IMAGE:
            same = self._picture(temp) == self._picture(media.path)
        else:
            same = _streams(temp) == _streams(media.path)
        if not same:
            raise WriteVerificationError(f"the tagged copy of {media.path.name} does not decode like the original")

    def _picture(self, path: Path) -> tuple[tuple[int, int], bytes]:
        try:
            image = decode_image(path, max_pixels=self.max_pixels, max_side_px=VERIFY_SIDE_PX)
        except DecodeError as exc:
            raise WriteVerificationError(f"the tagged copy does not decode: {exc.message}") from exc
        return image.size, image.tobytes()

    def _backup(self, target: Path) -> None:
        """Keep the first original as ``name.orig``: a hard link where possible (free), else a copy."""
        backup = backup_path(target)
        if backup.exists():
            return
        with self._temporary(backup) as temp:
            try:
                os.link(target, temp)
            except OSError:
                shutil.copy2(target, temp)
            temp.replace(backup)


def _check_keywords(readback: Keywords, edit: KeywordEdit, name: str) -> None:
    for field in XmpField:
        if frozenset(readback[field]) != edit.expected[field]:
            raise WriteVerificationError(
                f"{field} of {name} reads back as {sorted(readback[field])}, expected {sorted(edit.expected[field])}"
            )


def _sorted(edit: KeywordEdit) -> dict[XmpField, list[str]]:
    return {field: sorted(values) for field, values in edit.expected.items()}


def _streams(path: Path) -> tuple[list[tuple[str, str, int, int]], bool]:
    """Each stream's type, codec and size (or sample rate and channels), and whether the first picture (or sound)
    frame decodes."""
    try:
        with av.open(str(path)) as container:
            described = []
            for stream in container.streams:
                codec: Any = getattr(stream, "codec_context", None)
                if codec is None:
                    shape = (0, 0)
                elif stream.type == "video":
                    shape = (int(codec.width), int(codec.height))
                elif stream.type == "audio":
                    shape = (int(codec.sample_rate), int(codec.channels))
                else:
                    shape = (0, 0)
                described.append((str(stream.type), str(getattr(codec, "name", "")), *shape))
            playable = container.streams.video or container.streams.audio
            decodes = False
            if playable:
                for _ in container.decode(playable[0]):
                    decodes = True
                    break
            return described, decodes
    except (av.FFmpegError, OSError) as exc:
        raise WriteVerificationError(f"{path.name} cannot be opened as media: {exc}") from exc


def _copy_hashing(source: Path, dest: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as reader, dest.open("xb") as writer:
        while chunk := reader.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while chunk := reader.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _match_owner_and_mode(original: Path, copy: Path) -> None:
    shutil.copymode(original, copy)
    if hasattr(os, "chown"):
        status = original.stat()
        with contextlib.suppress(OSError):  # only root may give a file away; others keep their own files anyway
            os.chown(copy, status.st_uid, status.st_gid)


def _fsync(path: Path) -> None:
    with path.open("r+b") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open a directory for fsync; NTFS journals the rename
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
