"""A small typed client for the orchestrator's REST API v1 (used by the ``orchestrator`` CLI).

Every method raises :class:`ApiError` (with the server's machine-readable ``code``) when the API answers with an
error, and :class:`ApiConnectionError` when it cannot be reached. Uploads stream files from disk in 64 KiB reads.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from orchestrator import __version__
from orchestrator.duplicates.report import DuplicateGroupsView
from orchestrator.enums import AssetStatus, JobStatus
from orchestrator.errors import MediaAnalysisError

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
ASSET_PAGE_SIZE = 100


class ApiError(MediaAnalysisError):
    """The API answered with an error; ``code`` is the server's machine-readable code, ``status_code`` the HTTP one."""

    code = "api_error"

    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code


class ApiConnectionError(ApiError):
    """The API could not be reached (refused, timed out, TLS failure, connection dropped)."""

    code = "connection_error"


class _Model(BaseModel):
    # Fields the server adds later pass through untouched (and reach `results --format json`).
    model_config = ConfigDict(extra="allow")


class JobProgress(_Model):
    """How many of a job's files are in each stage."""

    total: int = 0
    uploaded: int = 0
    prepared: int = 0
    analyzing: int = 0
    done: int = 0
    failed: int = 0


class JobPublic(_Model):
    """A job as the API shows it; ``notices`` maps an analyzer to a message (e.g. which weights are missing)."""

    id: str
    name: str = ""
    status: JobStatus
    analyzers: list[str] = Field(default_factory=list)
    created_at: datetime | None = None
    sealed_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress = Field(default_factory=JobProgress)
    notices: dict[str, Any] = Field(default_factory=dict)


class JobsPublic(_Model):
    """One page of jobs and the total count."""

    data: list[JobPublic]
    count: int


class AssetTag(_Model):
    """One tag on an asset, with its score in [0, 1] and the analyzer that produced it."""

    tag: str
    score: float
    analyzer: str | None = None


class AssetPublic(_Model):
    """One file of a job with its state, tags and per-analyzer results."""

    id: str
    job_id: str | None = None
    name: str = ""
    media_kind: str | None = None
    mime_type: str | None = None
    size: int = 0
    sha256: str | None = None
    status: AssetStatus
    error_code: str | None = None
    error_message: str | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    tags: list[AssetTag] = Field(default_factory=list)
    results: dict[str, Any] = Field(default_factory=dict)


class AssetsPublic(_Model):
    """One page of assets and the total count."""

    data: list[AssetPublic]
    count: int


class SearchHit(_Model):
    """An asset found by a search, with its best tags and its rank score (None when ordered newest first)."""

    id: str
    name: str = ""
    media_kind: str | None = None
    status: AssetStatus
    tags: list[AssetTag] = Field(default_factory=list)
    score: float | None = None


class SearchResults(_Model):
    """One page of search results, best first, and the total count of matching assets."""

    data: list[SearchHit]
    count: int
    offset: int = 0
    next_offset: int | None = None
    ranked_by: str = "newest"


class UploadStatus(StrEnum):
    """What happened to one uploaded file."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


class UploadedFile(_Model):
    """The server's verdict on one file of an upload request (``code``/``message`` say why it was rejected)."""

    name: str
    status: UploadStatus
    status_code: int = 0
    asset_id: str | None = None
    code: str | None = None
    message: str | None = None
    size: int = 0
    sha256: str | None = None
    media_kind: str | None = None


class UploadResult(_Model):
    """The verdicts on all files of one upload request."""

    files: list[UploadedFile]
    accepted: int = 0
    rejected: int = 0


class TenantPublic(_Model):
    """A tenant (admin API)."""

    id: str
    name: str
    created_at: datetime | None = None


class TenantsPublic(_Model):
    """All tenants (admin API)."""

    data: list[TenantPublic]
    count: int


class ApiKeyIssued(_Model):
    """A newly issued API key; ``key`` is the plaintext, shown this once."""

    id: str
    key: str
    prefix: str = ""
    created_at: datetime | None = None


@dataclass(frozen=True)
class LocalFile:
    """A file on this machine to upload: its path, the name the server will see, and its size in bytes."""

    path: Path
    name: str
    size: int


ModelT = TypeVar("ModelT", bound=BaseModel)
ByteCallback = Callable[[int], None]


class _ReportingFile(io.FileIO):
    """An unbuffered file that reports every chunk httpx reads from it, for an upload progress bar."""

    def __init__(self, path: Path, on_bytes: ByteCallback | None) -> None:
        super().__init__(path, "rb")
        self._on_bytes = on_bytes

    def read(self, size: int | None = -1, /) -> bytes:
        chunk: bytes = super().read(size)
        if chunk and self._on_bytes is not None:
            self._on_bytes(len(chunk))
        return chunk


def api_error_from_response(response: httpx.Response) -> ApiError:
    """Turn an error response into an :class:`ApiError`: our ``{"detail": {"code", "message"}}`` shape, FastAPI's
    validation errors, a plain ``{"detail": "..."}``, or a proxy's HTML page."""
    status = response.status_code
    code = f"http_{status}"
    message = response.reason_phrase or "error"
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        code = str(detail.get("code") or code)
        message = str(detail.get("message") or message)
    elif isinstance(detail, str):
        message = detail
    elif isinstance(detail, list):
        code = "validation_error"
        problems = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(part) for part in item.get("loc", ()))
                problems.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
        message = "; ".join(problems) or message
    return ApiError(message, code=code, status_code=status)


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


class ApiClient:
    """Client for REST API v1. Authenticates with ``Authorization: Bearer <api_key>``; for the admin endpoints pass
    the admin token as ``api_key``. Pass ``transport`` to talk to something other than the network (tests)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        headers = {"User-Agent": f"ai-media-analysis-cli/{__version__}", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, API_PREFIX + path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiConnectionError(f"cannot reach the API at {self.base_url}: {_describe(exc)}") from exc
        except httpx.HTTPError as exc:
            raise ApiError(f"HTTP error talking to {self.base_url}: {_describe(exc)}", code="http_error") from exc

    def _request(self, method: str, path: str, *, expect: Collection[int] = (200,), **kwargs: Any) -> httpx.Response:
        response = self._send(method, path, **kwargs)
        if response.status_code not in expect:
            raise api_error_from_response(response)
        return response

    @staticmethod
    def _parse(model: type[ModelT], response: httpx.Response) -> ModelT:
        try:
            return model.model_validate(response.json())
        except ValueError as exc:  # JSON decode errors and pydantic's ValidationError are both ValueErrors
            raise ApiError(
                f"unexpected response from {response.request.method} {response.request.url.path}: {exc}",
                code="bad_response",
                status_code=response.status_code,
            ) from exc

    # -- jobs -----------------------------------------------------------------------------------------------------

    def create_job(
        self, *, name: str | None = None, analyzers: Sequence[str] | None = None, options: dict[str, Any] | None = None
    ) -> JobPublic:
        """Create an open job; files are then uploaded to it and it is sealed. Omitted fields take server defaults."""
        body: dict[str, Any] = {}
        if name:
            body["name"] = name
        if analyzers:
            body["analyzers"] = list(analyzers)
        if options:
            body["options"] = options
        return self._parse(JobPublic, self._request("POST", "/jobs", json=body, expect=(200, 201)))

    def list_jobs(self, *, limit: int = 100, offset: int = 0) -> JobsPublic:
        """One page of the tenant's jobs."""
        return self._parse(JobsPublic, self._request("GET", "/jobs", params={"limit": limit, "offset": offset}))

    def get_job(self, job_id: str) -> JobPublic:
        """A job with its progress and notices."""
        return self._parse(JobPublic, self._request("GET", f"/jobs/{job_id}"))

    def seal_job(self, job_id: str) -> JobPublic:
        """Close the job to new files; analysis starts."""
        return self._parse(JobPublic, self._request("POST", f"/jobs/{job_id}/seal", expect=(200, 201, 202)))

    def upload_files(
        self, job_id: str, files: Sequence[LocalFile], *, on_bytes: ByteCallback | None = None
    ) -> UploadResult:
        """Upload ``files`` in one multipart request (parts named ``files``), streamed from disk.

        The answer has one entry per file, in the order of ``files``. ``on_bytes`` is called with the size of every
        chunk read for sending. A file that cannot be opened is reported as rejected with code ``unreadable``
        without being sent. A proxy's 413 (request too large) is reported as every file of the request rejected
        with code ``request_too_large``.
        """
        local: dict[int, UploadedFile] = {}
        with contextlib.ExitStack() as stack:
            parts: list[tuple[str, tuple[str, BinaryIO]]] = []
            for index, item in enumerate(files):
                try:
                    handle = stack.enter_context(_ReportingFile(item.path, on_bytes))
                except OSError as exc:
                    local[index] = UploadedFile(
                        name=item.name,
                        status=UploadStatus.REJECTED,
                        code="unreadable",
                        message=f"cannot read the file: {exc.strerror or exc}",
                        size=item.size,
                    )
                    continue
                parts.append(("files", (item.name, handle)))
            if not parts:
                return UploadResult(files=[local[i] for i in sorted(local)], rejected=len(local))
            response = self._send("POST", f"/jobs/{job_id}/files", files=parts)
        result = self._upload_result(response, [name for _, (name, _) in parts])
        if not local:
            return result
        # The server answers one entry per part, in order; put the files not sent back in their places.
        sent = iter(result.files)
        merged: list[UploadedFile] = []
        for index in range(len(files)):
            verdict = local[index] if index in local else next(sent, None)
            if verdict is not None:
                merged.append(verdict)
        merged.extend(sent)
        return UploadResult(files=merged, accepted=result.accepted, rejected=result.rejected + len(local))

    def _upload_result(self, response: httpx.Response, names: list[str]) -> UploadResult:
        if response.status_code in (200, 201, 207):
            return self._parse(UploadResult, response)
        if 400 <= response.status_code < 500:
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("files"), list):
                return self._parse(UploadResult, response)
            if response.status_code == 413:
                error = api_error_from_response(response)
                message = error.message if error.code != "http_413" else "the request was larger than the server allows"
                code = error.code if error.code != "http_413" else "request_too_large"
                rejected = [
                    UploadedFile(name=name, status=UploadStatus.REJECTED, status_code=413, code=code, message=message)
                    for name in names
                ]
                return UploadResult(files=rejected, rejected=len(rejected))
        raise api_error_from_response(response)

    # -- assets ---------------------------------------------------------------------------------------------------

    def list_assets(
        self, job_id: str, *, limit: int = ASSET_PAGE_SIZE, offset: int = 0, status: AssetStatus | None = None
    ) -> AssetsPublic:
        """One page of a job's assets, optionally only those in ``status``."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        if status is not None:
            params["status"] = str(status)
        return self._parse(AssetsPublic, self._request("GET", f"/jobs/{job_id}/assets", params=params))

    def iter_assets(
        self, job_id: str, *, status: AssetStatus | None = None, page_size: int = ASSET_PAGE_SIZE
    ) -> Iterator[AssetPublic]:
        """Every asset of a job, fetched page by page."""
        offset = 0
        while True:
            page = self.list_assets(job_id, limit=page_size, offset=offset, status=status)
            yield from page.data
            offset += len(page.data)
            if not page.data or offset >= page.count:
                return

    def get_asset(self, asset_id: str) -> AssetPublic:
        """One asset with its tags and results."""
        return self._parse(AssetPublic, self._request("GET", f"/assets/{asset_id}"))

    def similar(self, *, asset_id: str | None = None, text: str | None = None, limit: int = 20) -> dict[str, Any]:
        """Assets like ``asset_id``, or pictures matching ``text``: ``{"data": [cards with similarity], ...}``."""
        if (asset_id is None) == (text is None):
            raise ValueError("give an asset id or a text, not both")
        if asset_id is not None:
            response = self._request("GET", f"/assets/{asset_id}/similar", params={"limit": limit})
        else:
            response = self._request("GET", "/similar", params={"text": text, "limit": limit})
        answer: dict[str, Any] = response.json()
        return answer

    def search(self, query: str, *, limit: int = 20, offset: int = 0) -> SearchResults:
        """The assets that match ``query`` (the search language of docs/search.md), best first."""
        params: dict[str, str | int] = {"q": query, "limit": limit, "offset": offset}
        return self._parse(SearchResults, self._request("GET", "/search", params=params))

    def list_duplicates(
        self, *, near: bool = False, threshold: int | None = None, limit: int = 50, offset: int = 0
    ) -> DuplicateGroupsView:
        """The tenant's duplicate groups: exact copies, or with ``near`` pictures that look the same."""
        params: dict[str, str | int] = {"kind": "near" if near else "exact", "limit": limit, "offset": offset}
        if threshold is not None:
            params["threshold"] = threshold
        return self._parse(DuplicateGroupsView, self._request("GET", "/duplicates", params=params))

    def start_writeback(
        self, *, job_id: str, mode: str = "append", min_score: float = 0.0, faces: bool = True
    ) -> dict[str, Any]:
        """Start writing a finished job's tags, people and face regions into its files' XMP (docs/writeback.md)."""
        body = {"job_id": job_id, "mode": mode, "min_score": min_score, "faces": faces}
        answer: dict[str, Any] = self._request("POST", "/writeback", expect=(202,), json=body).json()
        return answer

    def get_writeback(self, write_id: str) -> dict[str, Any]:
        """A write-back's status and what it did to each file."""
        answer: dict[str, Any] = self._request("GET", f"/writeback/{write_id}").json()
        return answer

    def list_writebacks(self, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """The tenant's write-backs, newest first: ``{"data": [...], "count": n}``."""
        answer: dict[str, Any] = self._request("GET", "/writeback", params={"limit": limit, "offset": offset}).json()
        return answer

    def undo_writeback(self, write_id: str) -> dict[str, Any]:
        """Put back the files a write-back replaced."""
        answer: dict[str, Any] = self._request("POST", f"/writeback/{write_id}/undo").json()
        return answer

    def list_people(self, *, order: str = "count", limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """The tenant's people: ``{"data": [{id, name, face_count, ...}], "count": n}``."""
        params: dict[str, str | int] = {"order": order, "limit": limit, "offset": offset}
        answer: dict[str, Any] = self._request("GET", "/people", params=params).json()
        return answer

    def rename_person(self, person_id: str, name: str | None) -> dict[str, Any]:
        """Name (or, with a blank name, unname) a person."""
        answer: dict[str, Any] = self._request("PATCH", f"/people/{person_id}", json={"name": name}).json()
        return answer

    def merge_person(self, person_id: str, *, into: str) -> dict[str, Any]:
        """Merge a person into another; answers the person who got the faces."""
        answer: dict[str, Any] = self._request("POST", f"/people/{person_id}/merge", json={"into": into}).json()
        return answer

    def download_asset(self, asset_id: str, dest: BinaryIO) -> int:
        """Stream the asset's original bytes into ``dest``; returns the number of bytes written."""
        written = 0
        try:
            with self._http.stream("GET", f"{API_PREFIX}/assets/{asset_id}/download") as response:
                if response.status_code != 200:
                    response.read()
                    raise api_error_from_response(response)
                for chunk in response.iter_bytes():
                    dest.write(chunk)
                    written += len(chunk)
        except httpx.TransportError as exc:
            raise ApiConnectionError(f"cannot reach the API at {self.base_url}: {_describe(exc)}") from exc
        return written

    # -- admin (authenticate with the admin token) ----------------------------------------------------------------

    def create_tenant(self, *, name: str) -> TenantPublic:
        """Create a tenant."""
        return self._parse(
            TenantPublic, self._request("POST", "/admin/tenants", json={"name": name}, expect=(200, 201))
        )

    def list_tenants(self) -> TenantsPublic:
        """All tenants."""
        return self._parse(TenantsPublic, self._request("GET", "/admin/tenants"))

    def issue_api_key(self, *, tenant_id: str, name: str = "") -> ApiKeyIssued:
        """Issue an API key for a tenant; the plaintext is in the answer only."""
        response = self._request("POST", f"/admin/tenants/{tenant_id}/keys", json={"name": name}, expect=(200, 201))
        return self._parse(ApiKeyIssued, response)

    def revoke_api_key(self, *, key_id: str) -> None:
        """Revoke an API key."""
        self._request("DELETE", f"/admin/keys/{key_id}", expect=(200, 204))
