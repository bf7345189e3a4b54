"""Streaming multipart uploads: each file part goes to the media store chunk by chunk, hashed and size-limited as it
arrives, and is never held whole in memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from anyio import to_thread
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect, Request

from orchestrator.errors import MediaAnalysisError
from orchestrator.storage import LocalStorage, StagedUpload

MAX_PARTS = 1000
# One part header line; python-multipart's default (4 KiB) turns a long file name into a 400 for the whole
# request. 16 KiB fits a 10 kB name, which is then shortened like any other; memory stays bounded per line.
MAX_PART_HEADER_BYTES = 16 * 1024


class MalformedUploadError(MediaAnalysisError):
    """The request is not a usable multipart upload."""

    code = "malformed_upload"


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    filename: str | None = None
    staged: StagedUpload | None = None


@dataclass
class ReceivedFile:
    """One fully received file part: the display name the client sent and its staged bytes."""

    raw_name: str | None
    staged: StagedUpload


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a Content-Type header, or a clear error."""
    if not content_type:
        raise MalformedUploadError("send files as multipart/form-data")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise MalformedUploadError("send files as multipart/form-data with a boundary")
    return params[b"boundary"]


async def receive_files(
    request: Request, *, storage: LocalStorage, limit_bytes: int, on_file: Callable[[ReceivedFile], object]
) -> int:
    """Parse the request body as it streams in; call ``on_file`` for each complete file part, in order.

    Parts without a filename (plain form fields) are read and ignored. If the body breaks off or is malformed, the
    part in progress is discarded and :class:`MalformedUploadError` is raised; the caller undoes what ``on_file``
    recorded for the earlier parts. Returns the number of file parts.
    """
    boundary = boundary_of(request.headers.get("content-type"))
    current = _Part()
    header_field = bytearray()
    header_value = bytearray()
    finished: list[ReceivedFile] = []
    count = 0

    def on_part_begin() -> None:
        nonlocal current
        current = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        current.headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal count
        _, params = parse_options_header(current.headers.get(b"content-disposition", b""))
        if b"filename" in params:
            count += 1
            if count > MAX_PARTS:
                raise MalformedUploadError(f"at most {MAX_PARTS} files per request")
            current.filename = params[b"filename"].decode("utf-8", "replace")
            current.staged = storage.stage(limit_bytes)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if current.staged is not None:
            current.staged.write(data[start:end])

    def on_part_end() -> None:
        if current.staged is not None:
            finished.append(ReceivedFile(current.filename, current.staged))
            current.staged = None

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
        max_header_size=MAX_PART_HEADER_BYTES,
    )
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except MalformedUploadError:
                raise
            except Exception as exc:  # python-multipart raises its own error types for malformed bodies
                raise MalformedUploadError(f"malformed multipart body: {exc}") from exc
            while finished:
                await to_thread.run_sync(on_file, finished.pop(0))
        parser.finalize()
        if parser.state != MultipartState.END:
            raise MalformedUploadError("the multipart body ended before its closing boundary")
    except ClientDisconnect as exc:
        raise MalformedUploadError("the upload was interrupted") from exc
    finally:
        if current.staged is not None:
            current.staged.discard()
        for leftover in finished:
            leftover.staged.discard()
    return count
