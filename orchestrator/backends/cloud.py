"""The cloud backend: a batch on one of the tenant's ready rented instances, over HTTPS with its pinned certificate.

Each instance takes at most two batches at a time (a slot per batch, taken with a conditional UPDATE): one runs
while the next one's media travel, so the GPU never waits on the network, and no instance queues up work that
another backend could do. The request is the local worker's (:mod:`orchestrator.backends.remote`), with the
instance's own token, and trusting only the certificate made for that instance at creation.

A failed batch raises BackendUnavailableError and moves on to the next backend. The instance is taken out of
service only when the failure repeats: if its ``/healthz`` does not answer 200 right after a failed batch, it is
marked failed, and the scheduler destroys it and excludes its machine. One bad batch does not cost an instance.

While a batch is in flight its row is linked to the instance (``Batch.instance_id``), so that when the instance is
marked failed here, or vanishes or is destroyed, the other batches on it go back to the queue at once instead of
waiting out their leases. A batch's own failure unlinks it first: it moves on to the next backend under its claim.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import httpx
from sqlalchemy.orm import Session

from gpu_worker.contract import BatchManifest, BatchResult
from orchestrator.backends.remote import WorkerClient
from orchestrator.batching import link_instance, release_instance_batches, unlink_instance
from orchestrator.clock import utcnow
from orchestrator.cloud.instances import (
    MAX_IN_FLIGHT,
    acquire_slot,
    enqueue_batches,
    mark_failed,
    ready_instances,
    release_slot,
)
from orchestrator.cloud.tls import pinned_ssl_context
from orchestrator.db.session import session_scope
from orchestrator.enums import Backend
from orchestrator.errors import BackendUnavailableError
from orchestrator.settings import Settings
from orchestrator.signing import MediaUrlSigner

HEALTH_PATH = "/healthz"
HEALTH_TIMEOUT_S = 5.0

SessionFactory = Callable[[], AbstractContextManager[Session]]


@dataclass(frozen=True)
class _Slot:
    """A slot taken on one instance, with what it takes to reach that instance."""

    instance_id: uuid.UUID
    url: str
    token: str
    cert_pem: str
    batch_id: uuid.UUID | None


class CloudBackend:
    """Runs a batch of ``tenant_id`` on one of its ready instances with a free slot."""

    kind = Backend.CLOUD

    def __init__(
        self,
        *,
        tenant_id: uuid.UUID,
        timeout_s: float,
        media: MediaUrlSigner | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        sessions: SessionFactory = session_scope,
    ) -> None:
        self.tenant_id = tenant_id
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self._media = media
        self._sessions = sessions

    @classmethod
    def from_settings(cls, settings: Settings, *, tenant_id: uuid.UUID) -> CloudBackend:
        """The backend for ``tenant_id`` with ``ORCH_CLOUD_WORKER_TIMEOUT_S``."""
        return cls(tenant_id=tenant_id, timeout_s=settings.cloud_worker_timeout_s)

    def execute(self, manifest: BatchManifest) -> BatchResult:
        """Take a slot, post the manifest to that instance, give the slot back (on every path)."""
        slot = self._take_slot(_batch_uuid(manifest.batch_id))
        try:
            client = WorkerClient(
                slot.url,
                slot.token,
                self.timeout_s,
                name=f"cloud instance {slot.instance_id}",
                media=self._media,
                verify=pinned_ssl_context(slot.cert_pem),
            )
            try:
                return client.run(manifest)
            except BackendUnavailableError as exc:
                self._unlink(slot)
                self._take_out_if_unhealthy(slot, reason=exc.message)
                raise
        finally:
            with self._sessions() as session:
                if slot.batch_id is not None:
                    unlink_instance(session, batch_id=slot.batch_id, instance_id=slot.instance_id)
                release_slot(session, instance_id=slot.instance_id, busy_at=utcnow())

    def _take_slot(self, batch_id: uuid.UUID | None) -> _Slot:
        with self._sessions() as session:
            for instance in ready_instances(session, tenant_id=self.tenant_id):
                if instance.worker_url is None:
                    continue
                if acquire_slot(session, instance_id=instance.id, max_in_flight=self.max_in_flight):
                    if batch_id is not None:
                        link_instance(session, batch_id=batch_id, instance_id=instance.id)
                    return _Slot(
                        instance.id, instance.worker_url, instance.worker_token, instance.tls_cert_pem, batch_id
                    )
        raise BackendUnavailableError(f"tenant {self.tenant_id} has no ready cloud instance with a free slot")

    def _take_out_if_unhealthy(self, slot: _Slot, *, reason: str) -> None:
        """A failed batch followed by a failed health check is a repeated failure: out of service."""
        try:
            answer = httpx.get(
                f"{slot.url.rstrip('/')}{HEALTH_PATH}",
                timeout=HEALTH_TIMEOUT_S,
                verify=pinned_ssl_context(slot.cert_pem),
                follow_redirects=False,
            )
            healthy = answer.status_code == 200
        except httpx.HTTPError:
            healthy = False
        if not healthy:
            released: list[uuid.UUID] = []
            with self._sessions() as session:
                if mark_failed(
                    session,
                    instance_id=slot.instance_id,
                    reason=f"a batch failed and /healthz did not answer: {reason}",
                ):
                    released = release_instance_batches(
                        session,
                        instance_id=slot.instance_id,
                        error=f"instance {slot.instance_id} failed mid-batch: {reason}",
                        now=utcnow(),
                    )
            enqueue_batches(released)

    def _unlink(self, slot: _Slot) -> None:
        if slot.batch_id is not None:
            with self._sessions() as session:
                unlink_instance(session, batch_id=slot.batch_id, instance_id=slot.instance_id)


def _batch_uuid(batch_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(batch_id)
    except ValueError:
        return None
