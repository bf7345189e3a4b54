"""The local-GPU backend: a ``gpu-worker serve`` on this machine or the LAN, reached over HTTP with its token.

How a batch is sent and its answer checked is shared with the cloud backend (:mod:`orchestrator.backends.remote`).
"""

from __future__ import annotations

from gpu_worker.contract import BatchManifest, BatchResult
from orchestrator.backends.remote import WorkerClient
from orchestrator.enums import Backend
from orchestrator.settings import Settings
from orchestrator.signing import MediaUrlSigner


class LocalWorkerBackend:
    """Runs batches on a ``gpu-worker serve`` at ``url``, authenticating with ``token``."""

    kind = Backend.LOCAL

    def __init__(self, url: str, token: str, timeout_s: float, *, media: MediaUrlSigner | None = None) -> None:
        self.client = WorkerClient(url, token, timeout_s, name="local worker", media=media)

    @classmethod
    def from_settings(cls, settings: Settings) -> list[LocalWorkerBackend]:
        """One backend per configured worker (``ORCH_LOCAL_WORKER_URLS``, or the single ``ORCH_LOCAL_WORKER_URL``),
        all with ``ORCH_LOCAL_WORKER_TOKEN`` and ``_TIMEOUT_S``."""
        return [
            cls(url, settings.local_worker_token, settings.local_worker_timeout_s)
            for url in settings.all_local_worker_urls
        ]

    @property
    def url(self) -> str:
        """The worker's base URL."""
        return self.client.url

    def remote_manifest(self, manifest: BatchManifest) -> BatchManifest:
        """The manifest the worker gets: every item as a signed URL (with its sha256), no local paths."""
        return self.client.remote_manifest(manifest)

    def execute(self, manifest: BatchManifest) -> BatchResult:
        """Post the manifest to the worker and return its validated, trimmed answer."""
        return self.client.run(manifest)
