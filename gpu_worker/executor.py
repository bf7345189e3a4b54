"""Execute a batch manifest in this process: decode items, run the requested analyzers, answer a BatchResult.

One bad item gets per-item errors and the batch goes on; an analyzer that cannot run here (unknown, or its weights
missing) is reported in ``unavailable`` and the other analyzers still run. Analyzers are loaded once and kept for
the life of the executor. ``run`` blocks; call it from a worker thread, never on an event loop.

Picture analyzers get decoded images and video frames, batched across the items of a chunk; audio analyzers get one
clip per audio or video item (a video's sound track once, not per frame), decoded only when one of them is active.

Throughput: items are fetched and decoded on a thread pool while the analyzers run on the previous chunk, so the
device is not idle during JPEG decoding; a batch that runs out of GPU memory is split in halves and retried rather
than failed; the device and its torch settings are chosen once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gpu_worker.audio import decode_audio
from gpu_worker.contract import (
    AnalyzerOutput,
    BatchManifest,
    BatchResult,
    ItemError,
    ItemResult,
    ManifestItem,
    MediaKind,
)
from gpu_worker.decode import DecodedItem, Frame, decode_item
from gpu_worker.device import DeviceInfo, choose_device, configure_torch
from gpu_worker.errors import DecodeError, DecodeErrorCode, ModelLoadError, ModelUnavailableError, WorkerError
from gpu_worker.models import ANALYZERS, analyzer_class
from gpu_worker.models.base import Analyzer, AnalyzerInput, InvalidOptionsError
from gpu_worker.offline import enforce_offline_libraries
from gpu_worker.settings import WorkerSettings, get_settings
from gpu_worker.store import ModelStore
from gpu_worker.text_embedding import TextEmbeddings

log = logging.getLogger(__name__)

ANALYZER_FAILED = "analyzer_failed"
# A model that could not be had is not looked for again on every batch; after this long it is.
UNAVAILABLE_RETRY_S = 60.0
# What inference raises on bad input or exhausted memory (torch.OutOfMemoryError is a RuntimeError).
RUN_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, ValueError, OSError)


OUT_OF_MEMORY = "out_of_memory"
MAX_DECODE_WORKERS = 8
# Where a frame keeps the input prepared for CLIP's own NSFW classifier, beside the analyzers' names.
CLIP_CLASSIFIER_KEY = "clip/nsfw-classifier"


def decode_worker_count(configured: int, cores: int, device: str) -> int:
    """Threads that fetch and decode items: ``configured`` when set; otherwise one per core when the models run on a
    GPU, where decoding is what keeps the GPU fed (a 1080p JPEG takes 10-20 ms of a core, so 2,000 images/s need
    dozens), and at most ``MAX_DECODE_WORKERS`` on the CPU, where the models' forward passes use the cores."""
    if configured > 0:
        return configured
    if device.startswith("cuda"):
        return max(1, cores)
    return max(1, min(MAX_DECODE_WORKERS, cores))


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA out-of-memory error (a RuntimeError), recognised without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _release_cached_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class _Prepared:
    """One item after the decode pool: its local file and decoded frames, or why it failed."""

    path: Path | None = None
    decoded: DecodedItem | None = None
    fetch_error: DecodeError | None = None
    decode_error: DecodeError | None = None
    temp_files: list[Path] = field(default_factory=list)


def _fail(result: ItemResult, analyzers: Sequence[str], exc: DecodeError) -> None:
    """Record why an item could not be fetched or decoded, for each analyzer that wanted it."""
    for name in analyzers:
        result.errors[name] = ItemError(code=exc.code, message=exc.message)


@dataclass
class _Unavailable:
    error: ModelUnavailableError | ModelLoadError
    since: float


class InProcessExecutor:
    """Runs batches with analyzers loaded in this process; safe to share between threads."""

    def __init__(self, settings: WorkerSettings | None = None, store: ModelStore | None = None) -> None:
        self.settings = settings or get_settings()
        enforce_offline_libraries(self.settings)
        self.store = store or ModelStore(self.settings)
        self._device: str | None = None
        self.device_info: DeviceInfo | None = None
        self._lock = threading.Lock()
        self._analyzers: dict[tuple[str, str], Analyzer] = {}
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._unavailable: dict[tuple[str, str], _Unavailable] = {}

    @property
    def device(self) -> str:
        """The device every analyzer of this executor runs on, chosen once."""
        with self._lock:
            if self._device is None:
                device = choose_device(self.settings.device)
                self.device_info = configure_torch(device, self.settings)
                self._device = device
            return self._device

    def analyzer(self, name: str, model_id: str | None = None) -> Analyzer:
        """The loaded analyzer ``name`` for ``model_id`` (default: its configured model), loading it once.

        Raises ``KeyError`` for an unknown name, ``ModelUnavailableError`` or ``ModelLoadError`` when it cannot run.
        """
        cls = analyzer_class(name)
        model_id = model_id or cls.default_model(self.settings)
        key = (name, model_id)
        with self._lock:
            if key in self._analyzers:
                return self._analyzers[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._analyzers:
                    return self._analyzers[key]
                failed = self._unavailable.get(key)
            if failed is not None and time.monotonic() - failed.since < UNAVAILABLE_RETRY_S:
                raise failed.error
            analyzer = cls(self.store, model_id)
            try:
                analyzer.load(self.device)
            except (ModelUnavailableError, ModelLoadError) as exc:
                with self._lock:
                    self._unavailable[key] = _Unavailable(exc, time.monotonic())
                raise
            if self.device == "cuda" or self.settings.warm_up_on_load:
                log.info("analyzer %s warmed up in %.2f s", name, analyzer.warm_up())
            with self._lock:
                self._analyzers[key] = analyzer
                self._unavailable.pop(key, None)
            return analyzer

    def embed_texts(self, texts: Sequence[str], model_id: str | None = None) -> TextEmbeddings:
        """CLIP text embeddings of ``texts`` from the CLIP model ``model_id`` (default: the configured one).

        Raises ``ModelUnavailableError`` or ``ModelLoadError`` when that model cannot run here.
        """
        from gpu_worker.models.clip import ClipAnalyzer

        if not texts:
            raise ValueError("no texts to embed")
        analyzer = self.analyzer("clip", model_id)
        assert isinstance(analyzer, ClipAnalyzer)
        rows = analyzer.encode_texts(list(texts)).tolist()
        return TextEmbeddings(model_id=analyzer.model_id, dim=len(rows[0]), embeddings=rows)

    def run(self, manifest: BatchManifest) -> BatchResult:
        """Analyze every item of the manifest with every requested analyzer that applies to it."""
        started = time.perf_counter()
        results = [ItemResult(asset_id=item.asset_id) for item in manifest.items]
        unavailable: dict[str, str] = {}
        active: dict[str, Analyzer] = {}
        for name in dict.fromkeys(manifest.analyzers):
            options = manifest.options.get(name, {})
            model = options.get("model")
            if name not in ANALYZERS:
                unavailable[name] = f"unknown analyzer {name!r}; this worker has: {', '.join(sorted(ANALYZERS))}"
                continue
            try:
                active[name] = self.analyzer(name, model if isinstance(model, str) else None)
            except WorkerError as exc:  # missing weights, a broken catalog, no CUDA where it was required
                log.warning("analyzer %s unavailable: %s", name, exc.message)
                unavailable[name] = exc.summary

        chunk_size = max(1, self.settings.decode_chunk_items)
        chunks = [
            range(start, min(start + chunk_size, len(manifest.items)))
            for start in range(0, len(manifest.items), chunk_size)
        ]
        if active and chunks:
            with (
                tempfile.TemporaryDirectory(prefix="gpuw-items-") as tmp,
                self._http_client(manifest) as client,
                ThreadPoolExecutor(self._decode_workers(), thread_name_prefix="gpuw-decode") as pool,
            ):
                # The next chunk is fetched and decoded while this one is analyzed.
                pending = self._submit(pool, manifest, chunks[0], active, Path(tmp), client)
                for number in range(len(chunks)):
                    upcoming = (
                        self._submit(pool, manifest, chunks[number + 1], active, Path(tmp), client)
                        if number + 1 < len(chunks)
                        else {}
                    )
                    prepared = {index: future.result() for index, future in pending.items()}
                    try:
                        self._analyze_chunk(manifest, prepared, active, results)
                    finally:
                        for item in prepared.values():
                            for temp in item.temp_files:
                                temp.unlink(missing_ok=True)
                    pending = upcoming

        elapsed = time.perf_counter() - started
        log.info(
            "batch %s: %d items, analyzers %s, unavailable %s, %.2f s",
            manifest.batch_id,
            len(manifest.items),
            sorted(active),
            sorted(unavailable),
            elapsed,
        )
        device = self.device if active else (self._device or "cpu")
        return BatchResult(
            batch_id=manifest.batch_id, items=results, unavailable=unavailable, device=device, elapsed_s=elapsed
        )

    def _http_client(self, manifest: BatchManifest) -> contextlib.AbstractContextManager[httpx.Client | None]:
        """One HTTP client for the URL items of a batch, shared by the decode threads.

        A client per item would build a new TLS context each time (tens of ms of CPU per image) and reconnect.
        """
        if not any(item.path is None and item.url is not None for item in manifest.items):
            return contextlib.nullcontext()
        return httpx.Client(timeout=self.settings.item_download_timeout_s, follow_redirects=True)

    def _decode_workers(self) -> int:
        return decode_worker_count(self.settings.decode_workers, os.cpu_count() or 1, self._device or "cpu")

    @staticmethod
    def _wanted(analyzers: Mapping[str, Analyzer], consumes: AnalyzerInput, kind: MediaKind) -> list[str]:
        return [n for n, a in analyzers.items() if a.consumes is consumes and a.applies_to(kind)]

    def _submit(
        self,
        pool: ThreadPoolExecutor,
        manifest: BatchManifest,
        indices: range,
        active: Mapping[str, Analyzer],
        tmp: Path,
        client: httpx.Client | None = None,
    ) -> dict[int, Future[_Prepared]]:
        futures: dict[int, Future[_Prepared]] = {}
        for index in indices:
            item = manifest.items[index]
            see = self._wanted(active, AnalyzerInput.IMAGE, item.media_kind)
            hear = self._wanted(active, AnalyzerInput.AUDIO, item.media_kind)
            if see or hear:
                futures[index] = pool.submit(
                    self._prepare,
                    item,
                    index,
                    tmp,
                    decode_frames=bool(see),
                    client=client,
                    analyzers=_preparers(active, see),
                )
        return futures

    def _prepare(
        self,
        item: ManifestItem,
        index: int,
        tmp: Path,
        *,
        decode_frames: bool,
        client: httpx.Client | None = None,
        analyzers: Mapping[str, Analyzer] | None = None,
    ) -> _Prepared:
        """Fetch one item, decode its frames and make each analyzer's prepared input for them (on a pool thread);
        failures are kept, never raised."""
        prepared = _Prepared()
        try:
            prepared.path = self._local_path(item, tmp, index, client)
        except DecodeError as exc:
            prepared.fetch_error = exc
            return prepared
        if item.path is None:
            prepared.temp_files.append(prepared.path)
        if decode_frames:
            try:
                decoded = decode_item(
                    prepared.path,
                    item.media_kind,
                    max_pixels=self.settings.max_image_pixels,
                    max_side_px=self.settings.max_decode_side_px,
                    video_frames=self.settings.video_frames,
                    scene_frames=self.settings.video_scene_frames,
                )
            except DecodeError as exc:
                prepared.decode_error = exc
            else:
                _prepare_frames(decoded.frames, analyzers or {})
                prepared.decoded = decoded
        return prepared

    def _analyze_chunk(
        self,
        manifest: BatchManifest,
        prepared: Mapping[int, _Prepared],
        active: Mapping[str, Analyzer],
        results: list[ItemResult],
    ) -> None:
        pictures = {name: a for name, a in active.items() if a.consumes is AnalyzerInput.IMAGE}
        sounds = {name: a for name, a in active.items() if a.consumes is AnalyzerInput.AUDIO}
        decoded: dict[int, DecodedItem] = {}
        for index, item in prepared.items():
            kind = manifest.items[index].media_kind
            see = self._wanted(pictures, AnalyzerInput.IMAGE, kind)
            hear = self._wanted(sounds, AnalyzerInput.AUDIO, kind)
            if item.fetch_error is not None:
                _fail(results[index], [*see, *hear], item.fetch_error)
                continue
            if item.decode_error is not None:
                _fail(results[index], see, item.decode_error)
            elif item.decoded is not None:
                decoded[index] = item.decoded
            if hear and item.path is not None:
                # Decoded here, one item at a time: one clip can hold hours of samples.
                self._run_audio(item.path, kind, {n: sounds[n] for n in hear}, manifest, results[index])

        # The nsfw analyzer runs first, so that CLIP can take its classifier scores instead of computing them again.
        classifier_scores: dict[int, float] = {}
        for name in sorted(pictures, key=lambda n: n != "nsfw"):
            analyzer = pictures[name]
            work = [(i, frame) for i, d in decoded.items() if analyzer.applies_to(d.kind) for frame in d.frames]
            if not work:
                continue
            images = [frame.image for _, frame in work]
            ready = {id(frame.image): frame.prepared[name] for _, frame in work if name in frame.prepared}
            with (
                _reusing_classifier_scores(analyzer, pictures.get("nsfw"), classifier_scores),
                analyzer.prepared_inputs(ready),
                _classifier_inputs(analyzer, [frame for _, frame in work]),
            ):
                outputs = self._run_analyzer(analyzer, manifest.options.get(name, {}), images)
            if name == "nsfw":
                classifier_scores = {
                    id(image): output.payload["nsfw_score"]
                    for image, output in zip(images, outputs, strict=True)
                    if isinstance(output, AnalyzerOutput)
                }
            per_item: dict[int, list[tuple[float | None, AnalyzerOutput | ItemError]]] = {}
            for (index, frame), output in zip(work, outputs, strict=True):
                per_item.setdefault(index, []).append((frame.timestamp_s, output))
            for index, frame_outputs in per_item.items():
                results[index] = self._merge(analyzer, name, decoded[index], frame_outputs, results[index])

    def _run_audio(
        self,
        path: Path,
        kind: MediaKind,
        analyzers: Mapping[str, Analyzer],
        manifest: BatchManifest,
        result: ItemResult,
    ) -> None:
        """Decode the item's sound once and give the one clip to every audio analyzer; errors stay with this item."""
        try:
            clip = decode_audio(path, kind, max_duration_s=self.settings.max_audio_duration_s)
        except DecodeError as exc:
            _fail(result, list(analyzers), exc)
            return
        for name, analyzer in analyzers.items():
            (output,) = self._run_analyzer(analyzer, manifest.options.get(name, {}), [clip])
            if isinstance(output, ItemError):
                result.errors[name] = output
            else:
                result.outputs[name] = output

    @staticmethod
    def _merge(
        analyzer: Analyzer,
        name: str,
        decoded: DecodedItem,
        frame_outputs: Sequence[tuple[float | None, AnalyzerOutput | ItemError]],
        result: ItemResult,
    ) -> ItemResult:
        good = [(ts, out) for ts, out in frame_outputs if isinstance(out, AnalyzerOutput)]
        errors = [out for _, out in frame_outputs if isinstance(out, ItemError)]
        if not good:
            result.errors[name] = errors[0]
        elif decoded.kind is MediaKind.VIDEO:
            result.outputs[name] = analyzer.aggregate(good)
        else:
            result.outputs[name] = good[0][1]
        return result

    @classmethod
    def _run_analyzer(
        cls, analyzer: Analyzer, options: Mapping[str, Any], inputs: list[Any]
    ) -> list[AnalyzerOutput | ItemError]:
        """Run the whole list at once. Out of GPU memory, split it in halves and retry; on any other failure, run
        input by input, so that one bad input fails alone."""
        try:
            return list(analyzer.run(inputs, options))
        except InvalidOptionsError as exc:
            return [ItemError(code=exc.code, message=exc.message)] * len(inputs)
        except RUN_ERRORS as exc:
            if is_out_of_memory(exc):
                _release_cached_memory()
                if len(inputs) == 1:
                    return [
                        ItemError(code=OUT_OF_MEMORY, message=f"{analyzer.name} ran out of GPU memory on this item")
                    ]
                half = len(inputs) // 2
                log.warning("analyzer %s ran out of memory on %d inputs; splitting", analyzer.name, len(inputs))
                return [
                    *cls._run_analyzer(analyzer, options, inputs[:half]),
                    *cls._run_analyzer(analyzer, options, inputs[half:]),
                ]
            log.warning("analyzer %s failed on a batch of %d: %s", analyzer.name, len(inputs), exc)
            if len(inputs) == 1:  # nothing to isolate, and an audio clip can take minutes to run again
                return [ItemError(code=ANALYZER_FAILED, message=f"{analyzer.name} failed: {exc}")]
        outputs: list[AnalyzerOutput | ItemError] = []
        for one in inputs:
            try:
                outputs.extend(analyzer.run([one], options))
            except RUN_ERRORS as exc:
                outputs.append(ItemError(code=ANALYZER_FAILED, message=f"{analyzer.name} failed: {exc}"))
        return outputs

    def _local_path(self, item: ManifestItem, tmp: Path, index: int, client: httpx.Client | None = None) -> Path:
        if item.path is not None:
            return Path(item.path)
        if item.url is not None:
            return self._download_item(item, tmp / f"item-{index}", client)
        raise DecodeError(DecodeErrorCode.DECODE_FAILED, f"item {item.asset_id} has neither a path nor a url")

    def _download_item(self, item: ManifestItem, dest: Path, client: httpx.Client | None = None) -> Path:
        """Fetch a URL item to ``dest`` under the size cap, checking its sha256 when the manifest gives one.

        ``client`` is the batch's shared client; without one, a client is made for this item alone.
        """
        assert item.url is not None
        hasher = hashlib.sha256()
        size = 0
        limit = self.settings.max_item_bytes
        stream = client.stream if client is not None else httpx.stream
        try:
            with (
                stream(
                    "GET", item.url, timeout=self.settings.item_download_timeout_s, follow_redirects=True
                ) as response,
                dest.open("wb") as out,
            ):
                response.raise_for_status()
                for chunk in response.iter_bytes(1024 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise DecodeError(
                            DecodeErrorCode.DOWNLOAD_FAILED, f"item {item.asset_id} is larger than {limit} bytes"
                        )
                    out.write(chunk)
                    hasher.update(chunk)
        except httpx.HTTPError as exc:
            raise DecodeError(DecodeErrorCode.DOWNLOAD_FAILED, f"item {item.asset_id}: download failed: {exc}") from exc
        if item.sha256 is not None and hasher.hexdigest() != item.sha256.lower():
            raise DecodeError(
                DecodeErrorCode.CHECKSUM_MISMATCH,
                f"item {item.asset_id}: sha256 {hasher.hexdigest()} does not match the manifest's {item.sha256}",
            )
        return dest


def _prepare_frames(frames: Sequence[Frame], analyzers: Mapping[str, Analyzer]) -> None:
    """Each analyzer's prepared input for each frame, kept on the frame. One that fails is left out: the analyzer
    prepares that input again in ``run`` and reports the failure with its item."""
    for frame in frames:
        for name, analyzer in analyzers.items():
            try:
                value = analyzer.prepare(frame.image)
            except RUN_ERRORS as exc:
                log.debug("analyzer %s could not prepare a frame ahead: %s", name, exc)
                continue
            if value is not None:
                frame.prepared[name] = value


def _clip_classifier(analyzer: Analyzer | None) -> Analyzer | None:
    """CLIP's own NSFW classifier, when ``analyzer`` is CLIP and has one loaded."""
    from gpu_worker.models.clip import ClipAnalyzer

    return analyzer.nsfw_classifier if isinstance(analyzer, ClipAnalyzer) else None


def _preparers(active: Mapping[str, Analyzer], names: Sequence[str]) -> dict[str, Analyzer]:
    """Whose inputs the decode threads prepare for an item: the analyzers ``names`` that see it and, when CLIP will
    run its NSFW classifier itself (no nsfw analyzer of the same model in the batch), that classifier too."""
    chosen = {name: active[name] for name in names}
    classifier = _clip_classifier(chosen.get("clip"))
    nsfw = chosen.get("nsfw")
    if classifier is not None and (nsfw is None or nsfw.model_id != classifier.model_id):
        chosen[CLIP_CLASSIFIER_KEY] = classifier
    return chosen


def _classifier_inputs(analyzer: Analyzer, frames: Sequence[Frame]) -> contextlib.AbstractContextManager[None]:
    """For CLIP, its classifier's inputs prepared ahead for ``frames`` (see ``_preparers``); otherwise nothing."""
    classifier = _clip_classifier(analyzer)
    if classifier is None:
        return contextlib.nullcontext()
    ready = {id(f.image): f.prepared[CLIP_CLASSIFIER_KEY] for f in frames if CLIP_CLASSIFIER_KEY in f.prepared}
    return classifier.prepared_inputs(ready)


def _reusing_classifier_scores(
    analyzer: Analyzer, nsfw: Analyzer | None, scores: Mapping[int, float]
) -> contextlib.AbstractContextManager[None]:
    """For CLIP, when the batch's nsfw analyzer runs the same classifier model CLIP would, its scores (by image id)
    stand in for CLIP's own classifier run; otherwise nothing changes."""
    from gpu_worker.models.clip import ClipAnalyzer

    classifier = analyzer.nsfw_classifier if isinstance(analyzer, ClipAnalyzer) else None
    if not scores or classifier is None or nsfw is None or nsfw.model_id != classifier.model_id:
        return contextlib.nullcontext()
    assert isinstance(analyzer, ClipAnalyzer)
    return analyzer.known_classifier_scores(scores)
