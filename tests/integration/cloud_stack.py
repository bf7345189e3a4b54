"""Shared parts of the cloud tests: the orchestrator API in a thread (it serves the signed media URLs that rented
workers fetch), uploads planned into batches, and waiting for a TLS worker with a pinned certificate."""

from __future__ import annotations

import io
import random
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from orchestrator.batching import plan_batches
from orchestrator.cloud.tls import pinned_ssl_context
from orchestrator.db.session import session_scope
from orchestrator.tasks.jobs import prepare_asset
from tests.fixtures.factories import TenantWithKey
from tests.fixtures.processes import wait_until
from tests.fixtures.tiny_models import draw_shape

SHAPES = {"clip": {"vocabulary": {"shape": ["red square", "blue circle"]}, "threshold": 0.0, "nsfw": False}}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class MediaTap:
    """Runs ``hook`` (once, then forgets it) when a worker first fetches a media URL: a way to act mid-batch."""

    hook: Callable[[], None] | None = None
    fetches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(self, app: Asgi) -> Asgi:
        """The ASGI app with the tap in front of it."""

        async def tapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and str(scope.get("path", "")).startswith("/media/"):
                with self._lock:
                    self.fetches += 1
                    hook, self.hook = self.hook, None
                if hook is not None:
                    hook()
            await app(scope, receive, send)

        return tapped


@contextmanager
def serve_api(port: int, tap: MediaTap) -> Iterator[str]:
    """The orchestrator API (configured by the current ORCH_ env) on 127.0.0.1:``port``; yields its URL."""
    from orchestrator.api.main import create_app

    config = uvicorn.Config(tap.wrap(create_app()), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-api", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{url}/healthz"), 30, "the API to answer")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _answers(url: str, **kwargs: Any) -> bool:
    try:
        return httpx.get(url, timeout=2, **kwargs).status_code == 200
    except httpx.HTTPError:
        return False


def wait_tls_healthy(url: str, cert_pem: str, alive: Callable[[], bool], timeout_s: float = 120) -> None:
    """Wait until the worker at ``url`` answers /healthz 200 over TLS with ``cert_pem`` pinned."""
    context = pinned_ssl_context(cert_pem)
    wait_until(lambda: _answers(f"{url}/healthz", verify=context) or not alive(), timeout_s, f"the worker at {url}")


def jpeg(colour: str, shape: str, seed: int) -> bytes:
    """A small JPEG of a coloured shape that the tiny CLIP tells apart."""
    buffer = io.BytesIO()
    draw_shape(colour, shape, size=128, rng=random.Random(seed)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@dataclass
class Upload:
    """A tenant's sealed, prepared and planned job."""

    job_id: uuid.UUID
    batch_ids: list[uuid.UUID]
    names: dict[uuid.UUID, str]


def upload_and_plan(api_url: str, tenant: TenantWithKey, files: dict[str, bytes], *, batch_size: int = 16) -> Upload:
    """Upload through the API, then prepare and plan as the Celery tasks would (called directly)."""
    with httpx.Client(base_url=api_url, headers=tenant.headers, timeout=30) as client:
        job = client.post("/api/v1/jobs", json={"name": "cloud", "analyzers": ["clip"], "options": SHAPES})
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        sent = client.post(
            f"/api/v1/jobs/{job_id}/files",
            files=[("files", (name, data, "image/jpeg")) for name, data in files.items()],
        )
        assert sent.status_code == 201, sent.text
        accepted = sent.json()["files"]
        for file in accepted:
            assert prepare_asset(file["asset_id"])
        assert client.post(f"/api/v1/jobs/{job_id}/seal").status_code == 200
    with session_scope() as session:
        batch_ids = plan_batches(session, job_id=uuid.UUID(job_id), batch_size=batch_size, max_attempts=3)
    assert batch_ids
    return Upload(uuid.UUID(job_id), batch_ids, {uuid.UUID(f["asset_id"]): f["name"] for f in accepted})
