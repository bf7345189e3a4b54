"""``gpu-worker serve``: the worker's HTTP API, which the orchestrator's cloud and local backends call.

- ``GET /healthz`` (no token): 503 while the configured analyzers load and a warm-up batch runs through each, then
  200 with the loaded models; 503 with the reasons if that failed.
- ``GET /v1/info``: device and GPU facts, torch/CUDA versions, loaded models, measured throughput, queue depth and
  the dynamic-batching counters.
- ``POST /v1/analyze``: a JSON :class:`~gpu_worker.contract.BatchManifest` whose items carry URLs the worker
  fetches, or ``multipart/form-data`` with a ``manifest`` JSON part and one file part per item that has no URL, the
  part's field name being the item's ``asset_id``. The answer is a :class:`~gpu_worker.contract.BatchResult`.
- ``POST /v1/embed/text``: ``{"texts": [...]}`` (at most 16 texts of 300 characters) answered with the loaded CLIP's
  L2-normalised text embeddings ``{"model_id", "dim", "embeddings"}``, computed on the executor thread.

The worker serves HTTPS when given a certificate and key (a rented instance gets them as ``GPUW_TLS_CERT_PEM`` and
``GPUW_TLS_KEY_PEM``; the orchestrator pins that certificate), plain HTTP otherwise (local use).
``/v1/*`` requires ``Authorization: Bearer <token>``, compared in constant time. Concurrent requests are merged
into shared runs by :class:`~gpu_worker.batcher.DynamicBatcher`, whose one thread owns the models; nothing blocking
runs on the event loop. Items given as local paths are refused: a caller reaches files only through URLs or uploads.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import math
import os
import platform
import shutil
import struct
import tempfile
import threading
import time
import wave
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

from anyio import to_thread
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageDraw
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect

from gpu_worker import __version__
from gpu_worker.batcher import BatcherBusyError, BatcherStoppedError, DynamicBatcher
from gpu_worker.contract import BatchManifest, BatchResult, ManifestItem, MediaKind
from gpu_worker.errors import WorkerError
from gpu_worker.executor import InProcessExecutor
from gpu_worker.logs import bind_context
from gpu_worker.metrics import WorkerMetrics
from gpu_worker.models import ANALYZERS
from gpu_worker.models.base import Analyzer
from gpu_worker.selfcheck import CheckStatus, GpuCheck, check_gpu
from gpu_worker.settings import WorkerSettings
from gpu_worker.text_embedding import EMBED_TEXT_PATH, TextEmbeddings, TextEmbedRequest
from gpu_worker.text_embedding import MAX_REQUEST_BYTES as MAX_TEXT_REQUEST_BYTES

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger(__name__)

MAX_FILE_PARTS = 1000
MANIFEST_FIELD = "manifest"
URL_SCHEMES = ("http://", "https://")
# Uploaded bytes are handed to the parser (and the disk) off the event loop in pieces of about this size.
PARSE_CHUNK_BYTES = 1024 * 1024
WARMUP_IMAGE_SIZE = (640, 480)
WARMUP_AUDIO_S = 1.0
WARMUP_AUDIO_RATE = 16_000
BUSY_RETRY_AFTER_S = 5


class RequestError(WorkerError):
    """A request the worker refuses; ``status_code`` is the HTTP status, ``code`` the stable reason."""

    def __init__(self, code: str, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status_code = status_code


class Readiness(StrEnum):
    """Whether the worker can take batches: models loading, ready after warm-up, or failed to load."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class WorkerState:
    """The one executor and batcher of a server, and what loading and warm-up found."""

    settings: WorkerSettings
    executor: InProcessExecutor
    batcher: DynamicBatcher
    analyzers: list[str]
    token: str | None
    status: Readiness = Readiness.LOADING
    device: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    models: dict[str, Analyzer[Any]] = field(default_factory=dict)
    warmup: dict[str, float] = field(default_factory=dict)
    gpu_check: GpuCheck | None = None
    started_s: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def warm_up(self) -> None:
        """Load every configured analyzer and run a generated batch through them; runs on the executor thread."""
        try:
            self._warm_up()
        except Exception as exc:  # whatever breaks here must show on /healthz instead of leaving it "loading"
            log.exception("warm-up failed")
            self._finish(Readiness.FAILED, errors={"warmup": f"{type(exc).__name__}: {exc}"})

    def _warm_up(self) -> None:
        # Before any model: a GPU this torch build cannot drive fails here with the fix, not in a model's load.
        self.gpu_check = check_gpu(self.executor.settings.device)
        if self.gpu_check.failed:
            log.error("GPU self-check failed: %s", self.gpu_check.message)
            self._finish(Readiness.FAILED, errors={"gpu": self.gpu_check.message})
            return
        level = logging.WARNING if self.gpu_check.status is CheckStatus.WARNING else logging.INFO
        log.log(level, "GPU self-check: %s", self.gpu_check.message)
        errors: dict[str, str] = {}
        models: dict[str, Analyzer[Any]] = {}
        for name in self.analyzers:
            if name not in ANALYZERS:
                errors[name] = f"unknown analyzer; this worker has: {', '.join(sorted(ANALYZERS))}"
                continue
            try:
                models[name] = self.executor.analyzer(name)
            except WorkerError as exc:
                errors[name] = exc.summary
        try:
            device: str | None = self.executor.device
        except WorkerError as exc:  # e.g. GPUW_DEVICE=cuda on a machine without one
            errors["device"], device = exc.summary, None
        if errors:
            for name, message in errors.items():
                log.error("analyzer %s cannot run on this worker: %s", name, message)
            self._finish(Readiness.FAILED, errors=errors, models=models, device=device)
            return
        with tempfile.TemporaryDirectory(prefix="gpuw-warmup-") as tmp:
            manifest = warmup_manifest(models.values(), Path(tmp), self.settings.serve_warmup_images)
            # The first run pays one-time costs (text embeddings of vocabularies, kernel selection); the second
            # is the throughput figure.
            timings = []
            for _ in range(2):
                started = time.perf_counter()
                result = self.executor.run(manifest)
                timings.append(time.perf_counter() - started)
                problems = dict(result.unavailable)
                for item in result.items:
                    problems.update({name: error.message for name, error in item.errors.items()})
                if problems:
                    log.error("warm-up batch failed: %s", problems)
                    self._finish(Readiness.FAILED, errors=problems, models=models, device=device)
                    return
        first_s, elapsed = timings
        warmup = {
            "items": float(len(manifest.items)),
            "first_run_s": round(first_s, 4),
            "seconds": round(elapsed, 4),
            "items_per_s": round(len(manifest.items) / max(elapsed, 1e-9), 3),
        }
        log.info("warm-up done on %s: %d items in %.2f s; ready", device, len(manifest.items), elapsed)
        self._finish(Readiness.READY, models=models, device=device, warmup=warmup)

    def _finish(
        self,
        status: Readiness,
        *,
        errors: dict[str, str] | None = None,
        models: dict[str, Analyzer[Any]] | None = None,
        device: str | None = None,
        warmup: dict[str, float] | None = None,
    ) -> None:
        with self._lock:
            self.status = status
            self.errors = errors or {}
            self.models = models or {}
            self.device = device
            self.warmup = warmup or {}

    def health(self) -> tuple[int, dict[str, Any]]:
        """HTTP status and body of ``/healthz``."""
        with self._lock:
            body: dict[str, Any] = {
                "status": str(self.status),
                "device": self.device,
                "models": {name: analyzer.model_id for name, analyzer in self.models.items()},
                "expected": list(self.analyzers),
            }
            if self.errors:
                body["errors"] = dict(self.errors)
            return (200 if self.status is Readiness.READY else 503), body

    def info(self) -> dict[str, Any]:
        """Body of ``/v1/info``."""
        with self._lock:
            models = dict(self.models)
            warmup = dict(self.warmup)
            status, device = self.status, self.device
        batching = self.batcher.snapshot()
        return {
            "version": __version__,
            "status": str(status),
            "uptime_s": round(time.monotonic() - self.started_s, 1),
            "device": device,
            "hardware": hardware_info(device),
            "models": {name: _analyzer_info(analyzer) for name, analyzer in models.items()},
            "throughput": {
                "warmup": warmup,
                "recent_items_per_s": batching["recent_items_per_s"],
                "recent_runs": batching["recent_runs"],
            },
            "batching": batching,
            "gpu_check": self.gpu_check.as_dict() if self.gpu_check else None,
        }


def _analyzer_info(analyzer: Analyzer[Any]) -> dict[str, Any]:
    stats = analyzer.stats
    return {
        "model_id": analyzer.model_id,
        "device": analyzer.device,
        "load_s": round(analyzer.load_s, 3) if analyzer.load_s is not None else None,
        "runs": stats.calls,
        "images": stats.images,
        "seconds": round(stats.seconds, 4),
        "images_per_s": round(stats.images / stats.seconds, 3) if stats.seconds > 0 else None,
    }


def hardware_info(device: str | None) -> dict[str, Any]:
    """torch and CUDA versions, and the GPU's name, memory and compute capability (``gpu`` is None on a CPU)."""
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device_name": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": None,
    }
    if device is not None and device.startswith("cuda") and torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        info["device_name"] = props.name
        info["cudnn"] = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
        info["gpu"] = {
            "name": props.name,
            "index": index,
            "count": torch.cuda.device_count(),
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_total_bytes": total,
            "memory_free_bytes": free,
            "memory_allocated_bytes": torch.cuda.memory_allocated(index),
        }
    return info


def warmup_manifest(analyzers: Iterable[Analyzer[Any]], folder: Path, images: int) -> BatchManifest:
    """Generated media for a warm-up batch: ``images`` JPEGs, and a short WAV when an analyzer hears audio."""
    chosen = list(analyzers)
    items: list[ManifestItem] = []
    if any(a.applies_to(MediaKind.IMAGE) for a in chosen):
        for index in range(max(1, images)):
            path = folder / f"warmup-{index}.jpg"
            _warmup_image(index).save(path, "JPEG", quality=90)
            items.append(ManifestItem(asset_id=f"warmup-{index}", media_kind=MediaKind.IMAGE, path=str(path)))
    if any(a.applies_to(MediaKind.AUDIO) for a in chosen):
        path = folder / "warmup.wav"
        path.write_bytes(_warmup_wav())
        items.append(ManifestItem(asset_id="warmup-audio", media_kind=MediaKind.AUDIO, path=str(path)))
    return BatchManifest(batch_id="warmup", analyzers=[a.name for a in chosen], items=items)


def _warmup_image(index: int) -> Image.Image:
    width, height = WARMUP_IMAGE_SIZE
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(image)
    hue = (index * 67) % 256
    draw.ellipse((width // 4, height // 4, width // 2, height // 2), fill=(hue, 255 - hue, 128))
    draw.rectangle((width // 2, height // 2, 3 * width // 4, 3 * height // 4), fill=(255 - hue, 90, hue))
    return image


def _warmup_wav() -> bytes:
    frames = int(WARMUP_AUDIO_S * WARMUP_AUDIO_RATE)
    # A quiet 440 Hz tone: real samples for the audio path, nothing a transcriber would call speech.
    samples = b"".join(
        struct.pack("<h", int(2000 * math.sin(2 * math.pi * 440 * i / WARMUP_AUDIO_RATE))) for i in range(frames)
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(WARMUP_AUDIO_RATE)
        out.writeframes(samples)
    return buffer.getvalue()


def answer_body(result: BatchResult) -> bytes:
    """The JSON body of a batch's answer, serialised by pydantic's own encoder: going through Python objects and the
    standard library's ``json`` took about 3 ms per image (512-float embeddings), a core's worth at 300 images/s. A
    float that is not finite, which JSON cannot carry, is written as ``null``."""
    return result.model_dump_json().encode()


def create_app(
    settings: WorkerSettings,
    *,
    token: str | None,
    analyzers: Sequence[str] | None = None,
    executor: InProcessExecutor | None = None,
) -> FastAPI:
    """The worker app. ``token=None`` serves without authentication (local development only)."""
    executor = executor or InProcessExecutor(settings)
    batcher = DynamicBatcher(
        executor.run,
        max_batch_items=settings.serve_max_batch_items,
        max_wait_s=settings.serve_max_wait_ms / 1000,
        max_queue_items=settings.serve_max_queue_items,
    )
    state = WorkerState(
        settings=settings,
        executor=executor,
        batcher=batcher,
        analyzers=list(dict.fromkeys(analyzers or settings.serve_analyzers)),
        token=token,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        batcher.call(state.warm_up)  # /healthz follows its progress; requests queue behind it
        try:
            yield
        finally:
            await to_thread.run_sync(batcher.stop)

    app = FastAPI(title="AI Media Analysis GPU worker", version=__version__, lifespan=lifespan)
    app.state.worker = state
    metrics = WorkerMetrics(state)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if exc.status_code == 503:
            headers = {"Retry-After": str(BUSY_RETRY_AFTER_S)}
        return JSONResponse(
            {"detail": {"code": exc.code, "message": exc.message}}, status_code=exc.status_code, headers=headers
        )

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if state.token is None:
            return
        presented = authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(presented.encode(), state.token.encode()):
            raise RequestError("unauthorized", "send the worker's token as 'Authorization: Bearer <token>'", 401)

    authorized = [Depends(require_token)]

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """200 once the configured analyzers are loaded and warmed up; 503 while loading or after a failure."""
        status_code, body = state.health()
        return JSONResponse(body, status_code=status_code)

    @app.get("/v1/info", dependencies=authorized)
    def info() -> dict[str, Any]:
        """Hardware, versions, loaded models, throughput, queue depth and batching counters."""
        return state.info()

    @app.get("/metrics", dependencies=authorized, include_in_schema=False)
    def prometheus_metrics() -> Response:
        """Prometheus text format; the same bearer token as /v1 (give it to the scraper as its credentials)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/analyze", dependencies=authorized, response_model=BatchResult)
    async def analyze(request: Request) -> Response:
        """Run a manifest (JSON, or multipart with uploaded files) and answer its BatchResult."""
        folder: Path | None = None
        try:
            kind = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
            if kind == "multipart/form-data":
                folder = Path(await to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="gpuw-upload-")))
                raw, files = await receive_multipart(
                    request,
                    folder=folder,
                    max_file_bytes=settings.max_item_bytes,
                    max_manifest_bytes=settings.serve_max_manifest_bytes,
                )
                manifest = attach_files(parse_manifest(raw), files)
            elif kind == "application/json":
                manifest = require_urls(parse_manifest(await read_body(request, settings.serve_max_manifest_bytes)))
            else:
                raise RequestError("unsupported_media_type", "send application/json or multipart/form-data", 415)
            bind_context(batch_id=manifest.batch_id)  # this request's task ends with it, and so do the ids
            try:
                future = batcher.submit(manifest)
            except BatcherBusyError as exc:
                raise RequestError(exc.code, exc.message, 503) from exc
            except BatcherStoppedError as exc:
                raise RequestError(exc.code, exc.message, 503) from exc
        except BaseException:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        future.add_done_callback(metrics.batch_observer())
        if folder is not None:
            # Removed when the run is over, not when this request ends: a caller that hangs up mid-run must not
            # pull the files from under the executor.
            cleanup = folder
            future.add_done_callback(lambda _: shutil.rmtree(cleanup, ignore_errors=True))
        try:
            result = await asyncio.wrap_future(future)
        except WorkerError as exc:
            raise RequestError("batch_failed", exc.summary, 500) from exc
        except (RuntimeError, ValueError, OSError) as exc:
            log.exception("batch %s failed", manifest.batch_id)
            raise RequestError("batch_failed", f"{type(exc).__name__}: {exc}", 500) from exc
        return Response(await to_thread.run_sync(answer_body, result), media_type="application/json")

    @app.post(EMBED_TEXT_PATH, dependencies=authorized, response_model=TextEmbeddings)
    async def embed_text(request: Request) -> JSONResponse:
        """CLIP text embeddings of ``{"texts": [...]}`` (at most 16, 300 characters each) from the loaded CLIP."""
        wanted = parse_text_request(await read_body(request, MAX_TEXT_REQUEST_BYTES))
        with state._lock:
            status, clip = state.status, state.models.get("clip")
        if status is not Readiness.READY:
            raise RequestError("not_ready", f"the worker is {status}; try again when /healthz answers 200", 503)
        if clip is None:
            raise RequestError("no_clip", "this worker does not serve the clip analyzer", 409)
        try:
            future = batcher.call(lambda: executor.embed_texts(wanted.texts, clip.model_id))
        except BatcherStoppedError as exc:
            raise RequestError(exc.code, exc.message, 503) from exc
        try:
            answer = await asyncio.wrap_future(future)
        except WorkerError as exc:
            raise RequestError("embed_failed", exc.summary, 500) from exc
        except (RuntimeError, ValueError, OSError) as exc:
            log.exception("text embedding failed")
            raise RequestError("embed_failed", f"{type(exc).__name__}: {exc}", 500) from exc
        return JSONResponse(answer.model_dump(mode="json"))

    return app


def parse_text_request(raw: bytes) -> TextEmbedRequest:
    """Validate a text-embedding request; a malformed one is refused with 422 and the reasons."""
    try:
        return TextEmbedRequest.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:20])
        raise RequestError("invalid_request", problems, 422) from exc


def parse_manifest(raw: bytes) -> BatchManifest:
    """Validate a manifest's JSON; a malformed one is refused with 422 and the pydantic reasons."""
    try:
        return BatchManifest.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:20])
        raise RequestError("invalid_manifest", problems, 422) from exc


def _check_remote(item: ManifestItem) -> None:
    if item.path is not None:
        raise RequestError("path_not_allowed", f"item {item.asset_id}: paths are not accepted over HTTP", 422)
    if item.url is not None and not item.url.lower().startswith(URL_SCHEMES):
        raise RequestError("url_required", f"item {item.asset_id}: only http(s) urls are fetched", 422)


def require_urls(manifest: BatchManifest) -> BatchManifest:
    """Every item of a JSON manifest must be an http(s) URL; a path would read the worker's own disk."""
    for item in manifest.items:
        _check_remote(item)
        if item.url is None:
            raise RequestError("url_required", f"item {item.asset_id}: give an http(s) url or upload the file", 422)
    return manifest


def attach_files(manifest: BatchManifest, files: dict[str, Path]) -> BatchManifest:
    """Items without a URL take the uploaded file whose part is named by their ``asset_id``."""
    items: list[ManifestItem] = []
    for item in manifest.items:
        _check_remote(item)
        if item.url is not None:
            items.append(item)
            continue
        uploaded = files.get(item.asset_id)
        if uploaded is None:
            raise RequestError("missing_file", f"item {item.asset_id} has no url and no file part of that name", 422)
        items.append(item.model_copy(update={"path": str(uploaded)}))
    return manifest.model_copy(update={"items": items})


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise RequestError("too_large", f"the manifest is larger than {limit_bytes} bytes", 413)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit_bytes:
                raise RequestError("too_large", f"the manifest is larger than {limit_bytes} bytes", 413)
    except ClientDisconnect as exc:
        raise RequestError("interrupted", "the request was interrupted", 400) from exc
    return bytes(body)


@dataclass
class _Part:
    name: str = ""
    is_file: bool = False
    handle: BinaryIO | None = None
    size: int = 0


class _MultipartReceiver:
    """Callbacks of python-multipart's parser: the manifest field in memory, each file part into its own file."""

    def __init__(self, folder: Path, *, max_file_bytes: int, max_manifest_bytes: int) -> None:
        self.folder = folder
        self.max_file_bytes = max_file_bytes
        self.max_manifest_bytes = max_manifest_bytes
        self.manifest: bytearray | None = None
        self.files: dict[str, Path] = {}
        self.part = _Part()
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.part = _Part()
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field.extend(data[start:end])

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value.extend(data[start:end])

    def on_header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self.part.name = params.get(b"name", b"").decode("utf-8", "replace")
        self.part.is_file = b"filename" in params
        if self.part.is_file:
            if self.part.name in self.files:
                raise RequestError("duplicate_part", f"two file parts are named {self.part.name!r}")
            if len(self.files) >= MAX_FILE_PARTS:
                raise RequestError("too_many_files", f"at most {MAX_FILE_PARTS} files per request", 413)
            path = self.folder / f"part-{len(self.files)}"
            self.files[self.part.name] = path
            self.part.handle = path.open("wb")
        elif self.part.name == MANIFEST_FIELD:
            if self.manifest is not None:
                raise RequestError("duplicate_part", "two manifest parts")
            self.manifest = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.part.size += end - start
        if self.part.handle is not None:
            if self.part.size > self.max_file_bytes:
                raise RequestError(
                    "too_large", f"file {self.part.name!r} is larger than {self.max_file_bytes} bytes", 413
                )
            self.part.handle.write(data[start:end])
        elif self.part.name == MANIFEST_FIELD and self.manifest is not None:
            if self.part.size > self.max_manifest_bytes:
                raise RequestError("too_large", f"the manifest is larger than {self.max_manifest_bytes} bytes", 413)
            self.manifest.extend(data[start:end])

    def on_part_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self.part.handle is not None:
            self.part.handle.close()
            self.part.handle = None


async def receive_multipart(
    request: Request, *, folder: Path, max_file_bytes: int, max_manifest_bytes: int
) -> tuple[bytes, dict[str, Path]]:
    """Stream a multipart body: file parts to files in ``folder`` (each capped), the ``manifest`` part to memory.

    Returns the manifest's raw JSON and the files by part name. Malformed or oversized bodies raise RequestError.
    """
    content_type = request.headers.get("content-type") or ""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError("malformed_multipart", "multipart/form-data needs a boundary")
    receiver = _MultipartReceiver(folder, max_file_bytes=max_file_bytes, max_manifest_bytes=max_manifest_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())

    def feed(data: bytes) -> None:
        try:
            parser.write(data)
        except RequestError:
            raise
        except Exception as exc:  # python-multipart raises its own error types for malformed bodies
            raise RequestError("malformed_multipart", f"malformed multipart body: {exc}") from exc

    pending = bytearray()
    try:
        async for chunk in request.stream():
            pending.extend(chunk)
            if len(pending) >= PARSE_CHUNK_BYTES:
                data, pending = bytes(pending), bytearray()
                await to_thread.run_sync(feed, data)
        if pending:
            await to_thread.run_sync(feed, bytes(pending))
        parser.finalize()
        if parser.state != MultipartState.END:
            raise RequestError("malformed_multipart", "the multipart body ended before its closing boundary")
    except ClientDisconnect as exc:
        raise RequestError("interrupted", "the upload was interrupted") from exc
    finally:
        receiver.close()
    if receiver.manifest is None:
        raise RequestError("missing_manifest", f"send the manifest JSON in a part named {MANIFEST_FIELD!r}", 422)
    return bytes(receiver.manifest), receiver.files


@dataclass(frozen=True)
class TlsFiles:
    """The certificate chain and private key that the worker serves HTTPS with (PEM files)."""

    cert_path: Path
    key_path: Path


@contextmanager
def private_tls_files(cert_pem: str, key_pem: str) -> Iterator[TlsFiles]:
    """Write PEM texts (as a rented instance gets them in its env) to a private folder for uvicorn; removed after.

    The folder is 0700 and the files 0600, created exclusively: the key is readable by this user alone.
    """
    folder = Path(tempfile.mkdtemp(prefix="gpuw-tls-"))  # mkdtemp creates it 0700
    try:
        files = TlsFiles(cert_path=folder / "cert.pem", key_path=folder / "key.pem")
        for path, text in ((files.cert_path, cert_pem), (files.key_path, key_pem)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(text)
        yield files
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_server(
    settings: WorkerSettings,
    *,
    host: str,
    port: int,
    token: str | None,
    analyzers: Sequence[str] | None,
    tls: TlsFiles | None = None,
) -> None:
    """Serve until interrupted (blocking): HTTPS with ``tls``, else plain HTTP (local use)."""
    import uvicorn

    app = create_app(settings, token=token, analyzers=analyzers)
    # httpx logs each request at INFO: one line per fetched item, each with its signed URL.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # log_config=None: uvicorn's loggers go through the worker's own logging set up by the CLI.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=30,
        ssl_certfile=str(tls.cert_path) if tls else None,
        ssl_keyfile=str(tls.key_path) if tls else None,
    )
