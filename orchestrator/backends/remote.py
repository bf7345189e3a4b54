"""Posting a batch to a ``gpu-worker serve`` over HTTP(S): what the local-GPU and the cloud backends share.

The worker gets the batch's items as short-lived signed URLs to this API's ``/media`` route, never as paths, so it
needs no access to the media store. Its answer is untrusted: it must parse as the contract's
:class:`~gpu_worker.contract.BatchResult` within a size cap, and only items and analyzers the manifest asked for
are kept, with messages and tags trimmed. Anything that means the worker could not run the batch (unreachable,
timed out, a refused certificate, 401, 5xx, a malformed answer, not one file fetched) raises
BackendUnavailableError, and the batch moves on to the next backend.
"""

from __future__ import annotations

import functools
import math
import ssl
import uuid

import httpx
from pydantic import ValidationError

from gpu_worker.contract import AnalyzerOutput, BatchManifest, BatchResult, ItemError, ItemResult, TagScore
from orchestrator.errors import BackendUnavailableError, MediaAnalysisError
from orchestrator.settings import get_settings
from orchestrator.signing import MediaUrlSigner, media_signer

ANALYZE_PATH = "/v1/analyze"
# Embeddings, tags and per-frame payloads stay far below this per item; transcripts of long audio are the largest.
MAX_ANSWER_BYTES_PER_ITEM = 8 * 1024**2
MAX_ANSWER_BASE_BYTES = 1024**2
MAX_MESSAGE_CHARS = 2000
MAX_CODE_CHARS = 64
MAX_TAG_CHARS = 200
MAX_TAGS_PER_OUTPUT = 1000
MAX_EMBEDDING_DIM = 8192
CONNECT_TIMEOUT_S = 10.0
# The executor's code for an item URL it could not fetch.
DOWNLOAD_FAILED = "download_failed"


class WorkerClient:
    """One ``gpu-worker serve`` at ``url``: posts manifests with ``token`` and returns validated, trimmed answers.

    ``verify`` is httpx's: True for the system CAs, or an ``ssl.SSLContext`` (a rented instance's pinned
    certificate). ``name`` says which worker in error messages, e.g. ``"local worker"``.
    """

    def __init__(
        self,
        url: str,
        token: str,
        timeout_s: float,
        *,
        name: str,
        media: MediaUrlSigner | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.name = name
        self.verify = verify
        self._media = media

    @property
    def media(self) -> MediaUrlSigner:
        """The signer of the items' URLs (from the process settings unless one was given)."""
        if self._media is None:
            self._media = media_signer(get_settings())
        return self._media

    def remote_manifest(self, manifest: BatchManifest) -> BatchManifest:
        """The manifest the worker gets: every item as a signed URL (with its sha256), no local paths."""
        media = self.media
        items = []
        for item in manifest.items:
            try:
                url = media.url_for(uuid.UUID(item.asset_id))
            except ValueError as exc:
                raise BackendUnavailableError(f"asset id {item.asset_id!r} cannot be signed") from exc
            items.append(item.model_copy(update={"path": None, "url": url}))
        return manifest.model_copy(update={"items": items})

    def run(self, manifest: BatchManifest) -> BatchResult:
        """Post the manifest to the worker and return its validated, trimmed answer."""
        try:
            remote = self.remote_manifest(manifest)
        except MediaAnalysisError as exc:  # no real secret key: no signed URLs, so no remote worker
            raise BackendUnavailableError(f"{self.name}: {exc.message}") from exc
        body = self._post(remote)
        try:
            answer = BatchResult.model_validate_json(body)
        except ValidationError as exc:
            raise BackendUnavailableError(f"{self.name} at {self.url} sent a malformed answer: {exc}") from exc
        if answer.batch_id != manifest.batch_id:
            raise BackendUnavailableError(
                f"{self.name} at {self.url} answered for batch {answer.batch_id[:80]!r}, not {manifest.batch_id!r}"
            )
        result = trim_answer(answer, manifest)
        if result.items and all(_only_download_failures(item) for item in result.items):
            raise BackendUnavailableError(
                f"{self.name} at {self.url} could not fetch any file of the batch from {self.media.base_url}; "
                "check that it can reach that address (ORCH_PUBLIC_URL)"
            )
        return result

    def _post(self, manifest: BatchManifest) -> bytes:
        limit = MAX_ANSWER_BASE_BYTES + MAX_ANSWER_BYTES_PER_ITEM * len(manifest.items)
        headers = {"Authorization": f"Bearer {self.token}"}
        timeout = httpx.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s))
        verify = _system_ssl_context() if self.verify is True else self.verify
        try:
            with (
                httpx.Client(timeout=timeout, follow_redirects=False, verify=verify) as client,
                client.stream(
                    "POST", f"{self.url}{ANALYZE_PATH}", json=manifest.model_dump(mode="json"), headers=headers
                ) as response,
            ):
                if response.status_code != 200:
                    snippet = _read_capped(response, 500).decode("utf-8", "replace")
                    raise BackendUnavailableError(
                        f"{self.name} at {self.url} answered HTTP {response.status_code}: {snippet}"
                    )
                body = _read_capped(response, limit)
                if len(body) > limit:
                    raise BackendUnavailableError(f"{self.name} at {self.url} sent more than {limit} bytes")
                return body
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise BackendUnavailableError(
                f"{self.name} at {self.url} is unreachable: {type(exc).__name__}: {exc}"
            ) from exc


@functools.cache
def _system_ssl_context() -> ssl.SSLContext:
    """httpx's own context for ``verify=True`` (the system CAs), made once per process: loading the CA bundle costs
    tens of milliseconds, and a new client per batch would pay it on every batch, even to a plain-HTTP worker."""
    return httpx.create_ssl_context()


def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the body, so that the caller can tell an oversized answer."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body.extend(chunk)
        if len(body) > limit:
            break
    return bytes(body[: limit + 1])


def _only_download_failures(item: ItemResult) -> bool:
    return not item.outputs and bool(item.errors) and all(e.code == DOWNLOAD_FAILED for e in item.errors.values())


def trim_answer(answer: BatchResult, manifest: BatchManifest) -> BatchResult:
    """Keep only the manifest's items (first answer for each) and analyzers, with bounded messages and tags."""
    wanted_items = {item.asset_id for item in manifest.items}
    wanted = set(manifest.analyzers)
    items: dict[str, ItemResult] = {}
    for item in answer.items:
        if item.asset_id not in wanted_items or item.asset_id in items:
            continue
        items[item.asset_id] = ItemResult(
            asset_id=item.asset_id,
            outputs={name: _trim_output(out) for name, out in item.outputs.items() if name in wanted},
            errors={
                name: ItemError(code=err.code[:MAX_CODE_CHARS], message=err.message[:MAX_MESSAGE_CHARS])
                for name, err in item.errors.items()
                if name in wanted
            },
        )
    return BatchResult(
        batch_id=manifest.batch_id,
        items=list(items.values()),
        unavailable={k: v[:MAX_MESSAGE_CHARS] for k, v in answer.unavailable.items() if k in wanted},
        device=answer.device[:32],
        elapsed_s=answer.elapsed_s if math.isfinite(answer.elapsed_s) else 0.0,
    )


def _trim_output(output: AnalyzerOutput) -> AnalyzerOutput:
    tags = [_trim_tag(t) for t in output.tags[:MAX_TAGS_PER_OUTPUT] if math.isfinite(t.score)]
    embedding = output.embedding
    if embedding is not None and (len(embedding) > MAX_EMBEDDING_DIM or not all(map(math.isfinite, embedding))):
        embedding = None
    return output.model_copy(update={"model_id": output.model_id[:200], "tags": tags, "embedding": embedding})


def _trim_tag(tag: TagScore) -> TagScore:
    """The tag with its text cut to the stored width and its score clamped to [0, 1]; the same object when it is
    within both already (a copy per tag was a measurable share of parsing an answer)."""
    if len(tag.tag) <= MAX_TAG_CHARS and 0.0 <= tag.score <= 1.0:
        return tag
    return tag.model_copy(update={"tag": tag.tag[:MAX_TAG_CHARS], "score": min(1.0, max(0.0, tag.score))})
