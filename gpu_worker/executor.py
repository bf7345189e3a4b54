"""Execute a batch manifest in this process: decode items, run the requested analyzers, answer a BatchResult.

One bad item gets per-item errors and the batch goes on; an analyzer that cannot run here (unknown, or its weights
missing) is reported in ``unavailable`` and the other analyzers still run. Analyzers are loaded once and kept for
the life of the executor. ``run`` blocks; call it from a worker thread, never on an event loop.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gpu_worker.contract import (
    AnalyzerOutput,
    BatchManifest,
    BatchResult,
    ItemError,
    ItemResult,
    ManifestItem,
    MediaKind,
)
from gpu_worker.decode import DecodedItem, decode_item
from gpu_worker.errors import DecodeError, DecodeErrorCode, ModelLoadError, ModelUnavailableError, WorkerError
from gpu_worker.models import ANALYZERS, analyzer_class
from gpu_worker.models.base import Analyzer, InvalidOptionsError
from gpu_worker.settings import DeviceChoice, WorkerSettings, get_settings
from gpu_worker.store import ModelStore

log = logging.getLogger(__name__)

ANALYZER_FAILED = "analyzer_failed"
# A model that could not be had is not looked for again on every batch; after this long it is.
UNAVAILABLE_RETRY_S = 60.0
# What inference raises on bad input or exhausted memory (torch.OutOfMemoryError is a RuntimeError).
RUN_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, ValueError, OSError)


def choose_device(choice: DeviceChoice) -> str:
    """``cuda`` when asked for or when ``auto`` finds a GPU, else ``cpu``."""
    if choice is DeviceChoice.CPU:
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if choice is DeviceChoice.CUDA:
        raise WorkerError("GPUW_DEVICE=cuda, but torch sees no CUDA device")
    return "cpu"


@dataclass
class _Unavailable:
    error: ModelUnavailableError | ModelLoadError
    since: float


class InProcessExecutor:
    """Runs batches with analyzers loaded in this process; safe to share between threads."""

    def __init__(self, settings: WorkerSettings | None = None, store: ModelStore | None = None) -> None:
        self.settings = settings or get_settings()
        self.store = store or ModelStore(self.settings)
        self._device: str | None = None
        self._lock = threading.Lock()
        self._analyzers: dict[tuple[str, str], Analyzer] = {}
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._unavailable: dict[tuple[str, str], _Unavailable] = {}

    @property
    def device(self) -> str:
        """The device every analyzer of this executor runs on, chosen once."""
        with self._lock:
            if self._device is None:
                self._device = choose_device(self.settings.device)
                log.info("inference device: %s", self._device)
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
            with self._lock:
                self._analyzers[key] = analyzer
                self._unavailable.pop(key, None)
            return analyzer

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
        for start in range(0, len(manifest.items), chunk_size):
            indices = range(start, min(start + chunk_size, len(manifest.items)))
            self._run_chunk(manifest, indices, active, results)

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

    def _run_chunk(
        self, manifest: BatchManifest, indices: range, active: Mapping[str, Analyzer], results: list[ItemResult]
    ) -> None:
        decoded: dict[int, DecodedItem] = {}
        with tempfile.TemporaryDirectory(prefix="gpuw-items-") as tmp:
            for index in indices:
                item = manifest.items[index]
                wanted = [name for name, analyzer in active.items() if analyzer.applies_to(item.media_kind)]
                if not wanted:
                    continue
                try:
                    path = self._local_path(item, Path(tmp), index)
                    decoded[index] = decode_item(
                        path,
                        item.media_kind,
                        max_pixels=self.settings.max_image_pixels,
                        max_side_px=self.settings.max_decode_side_px,
                        video_frames=self.settings.video_frames,
                    )
                except DecodeError as exc:
                    for name in wanted:
                        results[index].errors[name] = ItemError(code=exc.code, message=exc.message)

        for name, analyzer in active.items():
            work = [(i, frame) for i, d in decoded.items() if analyzer.applies_to(d.kind) for frame in d.frames]
            if not work:
                continue
            outputs = self._run_analyzer(analyzer, manifest.options.get(name, {}), [frame.image for _, frame in work])
            per_item: dict[int, list[tuple[float | None, AnalyzerOutput | ItemError]]] = {}
            for (index, frame), output in zip(work, outputs, strict=True):
                per_item.setdefault(index, []).append((frame.timestamp_s, output))
            for index, frame_outputs in per_item.items():
                results[index] = self._merge(analyzer, name, decoded[index], frame_outputs, results[index])

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

    @staticmethod
    def _run_analyzer(
        analyzer: Analyzer, options: Mapping[str, Any], images: list[Any]
    ) -> list[AnalyzerOutput | ItemError]:
        """Run the whole list at once; if that fails, image by image, so that one bad input fails alone."""
        try:
            return list(analyzer.run(images, options))
        except InvalidOptionsError as exc:
            return [ItemError(code=exc.code, message=exc.message)] * len(images)
        except RUN_ERRORS as exc:
            log.warning("analyzer %s failed on a batch of %d; retrying one by one: %s", analyzer.name, len(images), exc)
        outputs: list[AnalyzerOutput | ItemError] = []
        for image in images:
            try:
                outputs.extend(analyzer.run([image], options))
            except RUN_ERRORS as exc:
                outputs.append(ItemError(code=ANALYZER_FAILED, message=f"{analyzer.name} failed: {exc}"))
        return outputs

    def _local_path(self, item: ManifestItem, tmp: Path, index: int) -> Path:
        if item.path is not None:
            return Path(item.path)
        if item.url is not None:
            return self._download_item(item, tmp / f"item-{index}")
        raise DecodeError(DecodeErrorCode.DECODE_FAILED, f"item {item.asset_id} has neither a path nor a url")

    def _download_item(self, item: ManifestItem, dest: Path) -> Path:
        """Fetch a URL item to ``dest`` under the size cap, checking its sha256 when the manifest gives one."""
        assert item.url is not None
        hasher = hashlib.sha256()
        size = 0
        limit = self.settings.max_item_bytes
        try:
            with (
                httpx.stream(
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
