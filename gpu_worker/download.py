"""Resumable, retried HTTP downloads into a partial file.

A download continues where an earlier one stopped (an HTTP Range request against the bytes already in the partial
file), retries transient failures with exponential backoff, and never touches the final file name: the store hashes
the finished partial file and renames it only once verified.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from gpu_worker.errors import WorkerError

log = logging.getLogger(__name__)

HTTP_PARTIAL_CONTENT = 206
HTTP_RANGE_NOT_SATISFIABLE = 416
HTTP_TOO_MANY_REQUESTS = 429
HTTP_SERVER_ERROR = 500
HF_HOSTS = ("huggingface.co", "hf.co")


class TransientDownloadError(WorkerError):
    """A failure worth retrying: the connection broke, the server was busy or answered 5xx."""

    code = "download_transient"


class DownloadError(WorkerError):
    """A failure that another try of the same URL will not mend (404, 403, a body over the expected size)."""

    code = "download_failed"


def _auth_headers(url: str) -> dict[str, str]:
    """A Hugging Face token for gated repositories, sent to the hub only."""
    token = os.environ.get("HF_TOKEN")
    host = urlsplit(url).hostname or ""
    if token and (host in HF_HOSTS or host.endswith(".huggingface.co")):
        return {"Authorization": f"Bearer {token}"}
    return {}


def download_resumable(
    url: str,
    part: Path,
    *,
    timeout_s: float,
    attempts: int = 4,
    max_wait_s: float = 20.0,
    expected_size: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> int:
    """Download ``url`` into ``part``, continuing from the bytes ``part`` already holds. Returns its final size.

    Transient failures are retried ``attempts`` times with exponential backoff, each try resuming where the last
    one stopped. Raises :class:`DownloadError` or, after the last try, :class:`TransientDownloadError`.
    """

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("download of %s failed (try %d of %d): %s; retrying", url, state.attempt_number, attempts, error)

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=max_wait_s),
        retry=retry_if_exception_type(TransientDownloadError),
        before_sleep=log_retry,
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            _download_once(url, part, timeout_s=timeout_s, expected_size=expected_size, progress=progress)
    return part.stat().st_size


def _download_once(
    url: str,
    part: Path,
    *,
    timeout_s: float,
    expected_size: int | None,
    progress: Callable[[int, int | None], None] | None,
) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset >= expected_size:
        if offset > expected_size:
            part.unlink()
            raise TransientDownloadError(f"{part.name} held more than the expected {expected_size} bytes")
        return
    headers = _auth_headers(url)
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with (
            httpx.Client(timeout=timeout_s, follow_redirects=True) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code == HTTP_RANGE_NOT_SATISFIABLE and offset:
                return  # the partial file already holds the whole body; the hash decides whether it is good
            if response.status_code == HTTP_TOO_MANY_REQUESTS or response.status_code >= HTTP_SERVER_ERROR:
                raise TransientDownloadError(f"{url} answered {response.status_code}")
            if response.is_error:
                raise DownloadError(f"{url} answered {response.status_code}")
            resumed = offset > 0 and response.status_code == HTTP_PARTIAL_CONTENT
            if offset and not resumed:
                offset = 0  # the server ignored the Range header and sends the whole file again
            length = response.headers.get("content-length")
            total = offset + int(length) if length and length.isdigit() else expected_size
            done = offset
            with part.open("ab" if resumed else "wb") as out:
                for chunk in response.iter_bytes():  # as received, so a cut keeps every byte that arrived
                    done += len(chunk)
                    if expected_size is not None and done > expected_size:
                        raise DownloadError(f"{url} sent more than the expected {expected_size} bytes")
                    out.write(chunk)
                    if progress is not None:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
            if total is not None and done < total:
                raise TransientDownloadError(f"{url} ended after {done} of {total} bytes")
    except httpx.TransportError as exc:
        raise TransientDownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
