"""The local-GPU backend end to end: a real orchestrator API (uvicorn in a thread, on SQLite) and a real
``gpu-worker serve`` process with the tiny CLIP. Batches reach the worker as signed media URLs; expired or altered
URLs are refused; the worker's token is required; an unusable worker or answer raises BackendUnavailableError and the
batch falls back to the in-process backend."""

from __future__ import annotations

import http.server
import io
import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from gpu_worker.contract import BatchManifest, ManifestItem, MediaKind
from orchestrator.backends.local import LocalWorkerBackend
from orchestrator.backends.router import available_backends
from orchestrator.db.models import Asset, Batch, ResultTag
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, Backend
from orchestrator.errors import BackendUnavailableError
from orchestrator.signing import MediaUrlSigner
from orchestrator.tasks.jobs import analyze_batch, build_manifest
from tests.fixtures.factories import TenantWithKey, make_tenant
from tests.fixtures.processes import ManagedProcess, wait_until
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.tiny_models import TINY_CLIP_ID, draw_shape
from tests.integration import cloud_stack

SECRET = "local-backend-test-secret-0123456789abcdef"
WORKER_TOKEN = "local-worker-token-5d1e0c7a"


@dataclass
class Stack:
    """The running API and worker, and how to reach them."""

    api_url: str
    worker_url: str
    worker: ManagedProcess
    env: OrchestratorEnv

    def worker_info(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.worker_url}/v1/info", headers={"Authorization": f"Bearer {WORKER_TOKEN}"})
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def signer(self, clock: Callable[[], datetime] | None = None, base_url: str | None = None) -> MediaUrlSigner:
        if clock is None:
            return MediaUrlSigner(SECRET, base_url=base_url or self.api_url, ttl_s=600)
        return MediaUrlSigner(SECRET, base_url=base_url or self.api_url, ttl_s=600, clock=clock)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def jpeg(colour: str, shape: str, seed: int) -> bytes:

    buffer = io.BytesIO()
    draw_shape(colour, shape, size=128, rng=random.Random(seed)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stack(tiny_clip_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API in a thread on SQLite, configured for the worker; one worker process for the whole module."""
    import orchestrator.tasks.app as tasks_app
    from gpu_worker.settings import get_settings as worker_settings
    from orchestrator.api.main import create_app
    from orchestrator.db.migrate import upgrade
    from orchestrator.db.session import reset_engines
    from orchestrator.settings import get_settings

    folder = tmp_path_factory.mktemp("local-backend")
    api_port, worker_port = free_port(), free_port()
    api_url, worker_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{worker_port}"
    env = OrchestratorEnv(
        data_dir=folder,
        database_url=f"sqlite:///{(folder / 'orchestrator.sqlite').as_posix()}",
        broker_url=f"sqla+sqlite:///{(folder / 'queue.sqlite').as_posix()}",
    )
    model_env = {
        "GPUW_CATALOG_PATHS": json.dumps([str(tiny_clip_catalog)]),
        "GPUW_CLIP_MODEL": TINY_CLIP_ID,
        "GPUW_DEVICE": "cpu",
    }
    with pytest.MonkeyPatch.context() as patch:
        settings_env = {
            **env.environ(),
            **model_env,
            "GPUW_MODELS_DIR": str(folder / "in-process-models"),  # for the in-process fallback in this process
            "ORCH_SECRET_KEY": SECRET,
            "ORCH_PUBLIC_URL": api_url,
            "ORCH_LOCAL_WORKER_URL": worker_url,
            "ORCH_LOCAL_WORKER_TOKEN": WORKER_TOKEN,
            "ORCH_LOCAL_WORKER_TIMEOUT_S": "60",
        }
        for key, value in settings_env.items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        worker_settings.cache_clear()
        reset_engines()
        upgrade(env.database_url)
        patch.setattr(tasks_app, "celery_app", tasks_app.create_celery_app())

        server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=api_port, log_level="warning"))
        api_thread = threading.Thread(target=server.run, name="test-api", daemon=True)
        api_thread.start()

        worker_process_env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUW_", "ORCH_"))}
        worker_process_env.update(
            {**model_env, "GPUW_MODELS_DIR": str(folder / "worker-models"), "GPUW_TOKEN": WORKER_TOKEN}
        )
        worker = ManagedProcess(
            [sys.executable, "-m", "gpu_worker.cli", "serve", "--port", str(worker_port)],
            worker_process_env,
            folder / "worker.log",
        )
        try:
            wait_until(lambda: _answers(f"{api_url}/healthz"), 30, "the API to answer")
            wait_until(lambda: _answers(f"{worker_url}/healthz") or worker.popen.poll() is not None, 120, "the worker")
            assert worker.popen.poll() is None, worker.log()[-4000:]
            yield Stack(api_url=api_url, worker_url=worker_url, worker=worker, env=env)
        finally:
            worker.stop()
            print(f"--- worker.log (tail) ---\n{worker.log()[-3000:]}")
            server.should_exit = True
            api_thread.join(timeout=10)
            reset_engines()
            get_settings.cache_clear()
            worker_settings.cache_clear()


@dataclass
class Upload:
    """A tenant's sealed, prepared and planned job: its batch and its assets' bytes by asset id."""

    tenant: TenantWithKey
    batch_id: uuid.UUID
    files: dict[uuid.UUID, bytes]
    names: dict[uuid.UUID, str]


def upload_and_plan(stack: Stack, files: dict[str, bytes]) -> Upload:
    """A new tenant's job of ``files``, uploaded, prepared and planned into one batch."""
    tenant = make_tenant()
    planned = cloud_stack.upload_and_plan(stack.api_url, tenant, files)
    assert len(planned.batch_ids) == 1
    return Upload(tenant, planned.batch_ids[0], {a: files[n] for a, n in planned.names.items()}, planned.names)


def test_a_batch_runs_on_the_local_worker_through_signed_media_urls(stack: Stack) -> None:
    upload = upload_and_plan(stack, {"red.jpg": jpeg("red", "square", 1), "blue.jpg": jpeg("blue", "circle", 2)})
    manifest, _ = build_manifest(upload.batch_id)
    backend = available_backends()[0]
    assert isinstance(backend, LocalWorkerBackend)
    sent = backend.remote_manifest(manifest)
    assert all(item.path is None and item.url and item.url.startswith(f"{stack.api_url}/media/") for item in sent.items)
    assert [i.sha256 for i in sent.items] == [i.sha256 for i in manifest.items]
    # What the worker will fetch is the asset's exact bytes, with no tenant key.
    for item in sent.items:
        assert item.url is not None
        assert httpx.get(item.url).content == upload.files[uuid.UUID(item.asset_id)]

    before = stack.worker_info()["batching"]
    assert analyze_batch(str(upload.batch_id)) == "done"
    after = stack.worker_info()["batching"]
    assert after["requests"] - before["requests"] == 1
    assert after["items"] - before["items"] == 2

    with session_scope() as session:
        batch = session.get(Batch, upload.batch_id)
        assert batch is not None and batch.backend == Backend.LOCAL
        for asset_id, name in upload.names.items():
            asset = session.get(Asset, asset_id)
            assert asset is not None and asset.status == AssetStatus.DONE, asset and asset.error_message
            top = session.scalars(
                select(ResultTag.tag)
                .where(ResultTag.asset_id == asset_id, ResultTag.tag.like("shape/%"))
                .order_by(ResultTag.score.desc())
            ).first()
            assert top == ("shape/red square" if name == "red.jpg" else "shape/blue circle")


def test_expired_or_tampered_media_urls_are_refused_with_403(stack: Stack) -> None:
    upload = upload_and_plan(stack, {"one.jpg": jpeg("red", "square", 3)})
    asset_id = next(iter(upload.files))
    good = stack.signer().url_for(asset_id)
    assert httpx.get(good).status_code == 200

    an_hour_ago = datetime.fromtimestamp(time.time() - 3600, tz=UTC)
    expired = stack.signer(clock=lambda: an_hour_ago).url_for(asset_id)
    prefix, token = good.rsplit("/", 1)
    asset_hex, expires, signature = token.split(".")
    other_asset = f"{prefix}/{uuid.uuid4().hex}.{expires}.{signature}"
    longer = f"{prefix}/{asset_hex}.{int(expires) + 86400}.{signature}"
    foreign = MediaUrlSigner("another-deployment-secret-0123456789", base_url=stack.api_url, ttl_s=600).url_for(
        asset_id
    )
    for url, code in (
        (expired, "expired_media_token"),
        (other_asset, "invalid_media_token"),
        (longer, "invalid_media_token"),
        (foreign, "invalid_media_token"),
        (f"{prefix}/not-a-token", "invalid_media_token"),
    ):
        answer = httpx.get(url)
        assert answer.status_code == 403, url
        assert answer.json()["detail"]["code"] == code
    # A genuine token for an asset that does not exist finds nothing.
    assert httpx.get(stack.signer().url_for(uuid.uuid4())).status_code == 404


def _one_item_manifest(stack: Stack) -> BatchManifest:
    upload = upload_and_plan(stack, {"x.jpg": jpeg("blue", "circle", 4)})
    manifest, _ = build_manifest(upload.batch_id)
    return manifest


def test_the_worker_requires_its_token(stack: Stack) -> None:
    manifest = _one_item_manifest(stack)
    with pytest.raises(BackendUnavailableError, match="HTTP 401"):
        LocalWorkerBackend(stack.worker_url, "not-the-token", 30, media=stack.signer()).execute(manifest)
    answer = httpx.post(f"{stack.worker_url}/v1/analyze", json=manifest.model_dump(mode="json"))
    assert answer.status_code == 401
    result = LocalWorkerBackend(stack.worker_url, WORKER_TOKEN, 30, media=stack.signer()).execute(manifest)
    assert [i.asset_id for i in result.items] == [i.asset_id for i in manifest.items]
    assert result.items[0].outputs["clip"].model_id == TINY_CLIP_ID


def test_a_worker_that_cannot_fetch_the_media_is_unavailable_not_a_failed_batch(stack: Stack) -> None:
    manifest = _one_item_manifest(stack)
    unreachable = stack.signer(base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BackendUnavailableError, match="could not fetch any file"):
        LocalWorkerBackend(stack.worker_url, WORKER_TOKEN, 30, media=unreachable).execute(manifest)


def test_when_the_worker_is_down_the_batch_falls_back_to_in_process(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestrator.backends.in_process as in_process
    from orchestrator.settings import get_settings

    dead = f"http://127.0.0.1:{free_port()}"
    manifest = _one_item_manifest(stack)
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        LocalWorkerBackend(dead, WORKER_TOKEN, 5, media=stack.signer()).execute(manifest)

    monkeypatch.setenv("ORCH_LOCAL_WORKER_URL", dead)
    get_settings.cache_clear()
    monkeypatch.setattr(in_process, "_executor", None)  # built afresh from this module's GPUW_ settings
    try:
        assert [b.kind for b in available_backends()] == [Backend.LOCAL, Backend.IN_PROCESS]
        upload = upload_and_plan(stack, {"fallback.jpg": jpeg("red", "square", 5)})
        assert analyze_batch(str(upload.batch_id)) == "done"
        with session_scope() as session:
            batch = session.get(Batch, upload.batch_id)
            assert batch is not None and batch.backend == Backend.IN_PROCESS
            asset = session.get(Asset, next(iter(upload.files)))
            assert asset is not None and asset.status == AssetStatus.DONE
    finally:
        monkeypatch.delenv("ORCH_LOCAL_WORKER_URL")
        get_settings.cache_clear()


class _FakeWorker(http.server.BaseHTTPRequestHandler):
    """Speaks the worker's protocol with a scripted answer: (status, body) made from the posted manifest."""

    answer: Callable[[dict[str, Any]], tuple[int, bytes]]

    def do_POST(self) -> None:
        manifest = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, body = type(self).answer(manifest)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _fake_worker(answer: Callable[[dict[str, Any]], tuple[int, bytes]]) -> Iterator[str]:
    handler = type("Handler", (_FakeWorker,), {"answer": staticmethod(answer)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _item(asset_id: str, **extra: Any) -> dict[str, Any]:
    return {"asset_id": asset_id, "outputs": {}, "errors": {}, **extra}


def _result(manifest: dict[str, Any], items: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"batch_id": manifest["batch_id"], "items": items, **extra}).encode()


ANSWERS: dict[str, tuple[Callable[[dict[str, Any]], tuple[int, bytes]], str]] = {
    "server error": (lambda m: (500, b'{"detail": "boom"}'), "HTTP 500"),
    "not json": (lambda m: (200, b"<html>proxy error</html>"), "malformed answer"),
    "wrong shape": (lambda m: (200, b'{"batch_id": 3, "items": "none"}'), "malformed answer"),
    "another batch": (lambda m: (200, _result({"batch_id": "someone-else"}, [])), "answered for batch"),
    "oversized": (
        lambda m: (200, _result(m, [_item(i["asset_id"], pad="x" * (10 * 1024**2)) for i in m["items"]])),
        "more than",
    ),
}


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_an_unusable_answer_makes_the_backend_unavailable(case: str) -> None:
    answer, message = ANSWERS[case]
    manifest = BatchManifest(
        batch_id="b1", items=[ManifestItem(asset_id=str(uuid.uuid4()), media_kind=MediaKind.IMAGE, path="/x")]
    )
    signer = MediaUrlSigner(SECRET, base_url="http://127.0.0.1:9", ttl_s=60)
    with _fake_worker(answer) as url, pytest.raises(BackendUnavailableError, match=message):
        LocalWorkerBackend(url, WORKER_TOKEN, 10, media=signer).execute(manifest)


def test_an_answer_is_trimmed_to_the_manifest_items_and_analyzers() -> None:
    mine, stranger = str(uuid.uuid4()), str(uuid.uuid4())
    manifest = BatchManifest(batch_id="b2", items=[ManifestItem(asset_id=mine, media_kind=MediaKind.IMAGE, path="/x")])
    output = {
        "model_id": "m",
        "tags": [{"tag": "t" * 500, "score": 3.0}, {"tag": "ok", "score": 0.5}],
        "embedding": [0.1, 0.2],
    }
    items = [
        _item(mine, outputs={"clip": output, "sneaky": output}, errors={"faces": {"code": "c", "message": "m" * 9000}}),
        _item(mine, outputs={}),  # a second answer for the same item is ignored
        _item(stranger, outputs={"clip": output}),
    ]

    def answer(m: dict[str, Any]) -> tuple[int, bytes]:
        return 200, _result(m, items, unavailable={"clip": "x" * 9000, "other": "y"})

    signer = MediaUrlSigner(SECRET, base_url="http://127.0.0.1:9", ttl_s=60)
    manifest = manifest.model_copy(update={"analyzers": ["clip", "faces"]})
    with _fake_worker(answer) as url:
        result = LocalWorkerBackend(url, WORKER_TOKEN, 10, media=signer).execute(manifest)
    assert [i.asset_id for i in result.items] == [mine]
    only = result.items[0]
    assert set(only.outputs) == {"clip"}
    assert [(t.tag, t.score) for t in only.outputs["clip"].tags] == [("t" * 200, 1.0), ("ok", 0.5)]
    assert len(only.errors["faces"].message) == 2000
    assert set(result.unavailable) == {"clip"} and len(result.unavailable["clip"]) == 2000
