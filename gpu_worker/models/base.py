"""The analyzer base class: one model family, loaded once, run on batches of images.

The base owns what every analyzer needs the same way: resolving weights through the model store, one retry after
clearing a cache that may be corrupt, and timing of loads and runs. A subclass implements ``_load`` and ``_run``.
Both block; callers keep them off any event loop.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from gpu_worker.contract import AnalyzerOutput, MediaKind, TagScore
from gpu_worker.errors import ModelLoadError, ModelUnavailableError, WorkerError
from gpu_worker.settings import WorkerSettings
from gpu_worker.store import ModelEntry, ModelFamily, ModelState, ModelStore, PinState

log = logging.getLogger(__name__)

# What reading or deserialising bad weights raises; anything else is a bug and propagates.
LOAD_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    OSError,
    ValueError,
    KeyError,
    EOFError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


class InvalidOptionsError(WorkerError):
    """The analyzer options of a batch are invalid; every item of the batch gets this error."""

    code = "invalid_options"


@dataclass
class RunStats:
    """Cumulative run timing of one analyzer, for logs and the worker's info endpoint."""

    calls: int = 0
    images: int = 0
    seconds: float = 0.0
    last_s: float = 0.0


class Analyzer(ABC):
    """One model family. ``load(device)`` once, then ``run(images, options)`` from any thread."""

    name: ClassVar[str]
    family: ClassVar[ModelFamily]
    media_kinds: ClassVar[frozenset[MediaKind]]
    load_errors: ClassVar[tuple[type[BaseException], ...]] = LOAD_ERRORS

    def __init__(self, store: ModelStore, model_id: str) -> None:
        self.store = store
        self.model_id = model_id
        self.device: str | None = None
        self.load_s: float | None = None
        self.stats = RunStats()
        self._stats_lock = threading.Lock()

    @classmethod
    @abstractmethod
    def default_model(cls, settings: WorkerSettings) -> str:
        """The model id used when a batch's options name none."""

    @property
    def loaded(self) -> bool:
        """True once ``load`` succeeded."""
        return self.device is not None

    def applies_to(self, media_kind: MediaKind) -> bool:
        """Whether this analyzer has anything to say about items of this kind."""
        return media_kind in self.media_kinds

    def load(self, device: str) -> None:
        """Resolve the weights and load the model onto ``device``.

        When loading fails, cached files that may be bad are cleared and fetched again, and the load is tried once
        more. Raises ``ModelUnavailableError`` (no weights; the message tells the user how to provide them) or
        ``ModelLoadError``.
        """
        entry = self.store.entry(self.model_id)
        if entry.family is not self.family:
            raise ModelUnavailableError(
                self.model_id,
                f"Model {self.model_id!r} is a {entry.family} model; the {self.name} analyzer needs a "
                f"{self.family} model.",
            )
        started = time.perf_counter()
        folder = self.store.resolve(self.model_id)
        try:
            self._load(entry, folder, device)
        except self.load_errors as first:
            log.warning("model %s failed to load from %s: %s", self.model_id, folder, first)
            if not self._clear_suspect_cache():
                raise ModelLoadError(
                    self.model_id, f"Model {self.model_id!r} has intact files in {folder} but cannot be loaded: {first}"
                ) from first
            folder = self.store.resolve(self.model_id)
            try:
                self._load(entry, folder, device)
            except self.load_errors as second:
                raise ModelLoadError(
                    self.model_id,
                    f"Model {self.model_id!r} cannot be loaded from {folder}, even after fetching it again: {second}",
                ) from second
        self.device = device
        self.load_s = time.perf_counter() - started
        log.info("model %s loaded on %s in %.2f s", self.model_id, device, self.load_s)

    def _clear_suspect_cache(self) -> bool:
        """Remove cached files that may explain a failed load; False when they are provably the published ones."""
        state = self.store.verify(self.model_id)  # re-hashes, and removes files that fail their checksum
        if state is ModelState.PRESENT:
            if self.store.pin_state(self.model_id) is PinState.CATALOG:
                return False
            # The hash was recorded from our own first download, which may itself have been bad.
            self.store.invalidate(self.model_id)
        return True

    def run(self, images: Sequence[Image.Image], options: Mapping[str, Any]) -> list[AnalyzerOutput]:
        """One output per image, in order. Raises ``InvalidOptionsError`` for bad options."""
        if not self.loaded:
            raise RuntimeError(f"analyzer {self.name} is not loaded")
        started = time.perf_counter()
        outputs = self._run(images, options)
        if len(outputs) != len(images):
            raise RuntimeError(f"analyzer {self.name} returned {len(outputs)} outputs for {len(images)} images")
        elapsed = time.perf_counter() - started
        with self._stats_lock:
            self.stats.calls += 1
            self.stats.images += len(images)
            self.stats.seconds += elapsed
            self.stats.last_s = elapsed
        return outputs

    def aggregate(self, frames: Sequence[tuple[float | None, AnalyzerOutput]]) -> AnalyzerOutput:
        """Combine the outputs of a video's frames: mean embedding (re-normalised), highest score per tag.

        ``payload["frames"]`` keeps each frame's timestamp, tags and payload.
        """
        if not frames:
            raise ValueError("no frames to aggregate")
        best: dict[str, float] = {}
        for _, output in frames:
            for tag in output.tags:
                best[tag.tag] = max(best.get(tag.tag, 0.0), tag.score)
        tags = [TagScore(tag=t, score=s) for t, s in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))]
        embeddings = [o.embedding for _, o in frames if o.embedding is not None]
        embedding = _mean_normalised(embeddings) if embeddings else None
        per_frame = [{"timestamp_s": ts, "tags": [t.model_dump() for t in o.tags], **o.payload} for ts, o in frames]
        return AnalyzerOutput(
            model_id=frames[0][1].model_id, tags=tags, embedding=embedding, payload={"frames": per_frame}
        )

    @abstractmethod
    def _load(self, entry: ModelEntry, folder: Path, device: str) -> None:
        """Load the model from the verified files in ``folder`` onto ``device``."""

    @abstractmethod
    def _run(self, images: Sequence[Image.Image], options: Mapping[str, Any]) -> list[AnalyzerOutput]:
        """Analyze a batch of RGB images."""


def _mean_normalised(vectors: Sequence[Sequence[float]]) -> list[float]:
    dim = len(vectors[0])
    mean = [sum(v[i] for v in vectors) / len(vectors) for i in range(dim)]
    norm = sum(x * x for x in mean) ** 0.5
    return [x / norm for x in mean] if norm > 0 else mean
