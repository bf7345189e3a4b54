"""The analyzer base class: one model family, loaded once, run on batches of inputs.

The base owns what every analyzer needs the same way: resolving weights through the model store, one retry after
clearing a cache that may be corrupt, and timing of loads and runs. A subclass implements ``_load`` and ``_run``.
Both block; callers keep them off any event loop.

Most analyzers look at pictures (``consumes = AnalyzerInput.IMAGE``: decoded images and video frames, one output per
picture); speech analyzers listen (``AnalyzerInput.AUDIO``: one :class:`~gpu_worker.audio.AudioClip` per item, the
whole file or a video's whole sound track). The executor decodes only what the active analyzers consume.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
import time
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic

from typing_extensions import TypeVar

from gpu_worker.contract import AnalyzerOutput, MediaKind, TagScore
from gpu_worker.errors import ModelLoadError, ModelUnavailableError, WorkerError
from gpu_worker.settings import WorkerSettings, uses_half_precision
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


# A bare ``Analyzer`` (the executor's view, and subclasses that do not say) takes any input.
InputT = TypeVar("InputT", default=Any)
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
"""What one analyzer input is: a PIL image for picture analyzers, an ``AudioClip`` for speech analyzers."""


class AnalyzerInput(StrEnum):
    """What an analyzer consumes, which decides what the executor decodes for it."""

    IMAGE = "image"  # RGB PIL images: a picture, or the sampled frames of a video
    AUDIO = "audio"  # an AudioClip: the sound of an audio file or of a video, once per item


class InvalidOptionsError(WorkerError):
    """The analyzer options of a batch are invalid; every item of the batch gets this error."""

    code = "invalid_options"


@dataclass
class RunStats:
    """Cumulative run timing of one analyzer, for logs and the worker's info endpoint."""

    calls: int = 0
    images: int = 0  # inputs analyzed: images and video frames, or audio clips
    seconds: float = 0.0
    last_s: float = 0.0


class Analyzer(ABC, Generic[InputT]):
    """One model family. ``load(device)`` once, then ``run(inputs, options)`` from any thread."""

    name: ClassVar[str]
    family: ClassVar[ModelFamily]
    media_kinds: ClassVar[frozenset[MediaKind]]
    consumes: ClassVar[AnalyzerInput] = AnalyzerInput.IMAGE
    load_errors: ClassVar[tuple[type[BaseException], ...]] = LOAD_ERRORS

    def __init__(self, store: ModelStore, model_id: str) -> None:
        self.store = store
        self.model_id = model_id
        self.device: str | None = None
        self.load_s: float | None = None
        self.stats = RunStats()
        self._stats_lock = threading.Lock()
        self._prepared: dict[int, Any] = {}
        self._prepared_lock = threading.Lock()

    @classmethod
    @abstractmethod
    def default_model(cls, settings: WorkerSettings) -> str:
        """The model id used when a batch's options name none."""

    def half_precision(self, device: str | None = None) -> bool:
        """Whether this analyzer's model computes in float16 on ``device`` (default: the one it is loaded on)."""
        return uses_half_precision(self.store.settings.precision, device or self.device or "cpu")

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

    def run(self, inputs: Sequence[InputT], options: Mapping[str, Any]) -> list[AnalyzerOutput]:
        """One output per input (image or audio clip), in order. Raises ``InvalidOptionsError`` for bad options."""
        if not self.loaded:
            raise RuntimeError(f"analyzer {self.name} is not loaded")
        started = time.perf_counter()
        outputs = self._run(inputs, options)
        if len(outputs) != len(inputs):
            raise RuntimeError(f"analyzer {self.name} returned {len(outputs)} outputs for {len(inputs)} inputs")
        elapsed = time.perf_counter() - started
        with self._stats_lock:
            self.stats.calls += 1
            self.stats.images += len(inputs)
            self.stats.seconds += elapsed
            self.stats.last_s = elapsed
        return outputs

    def prepare(self, item: InputT) -> Any | None:
        """This analyzer's per-input CPU work that depends on nothing but the input (resizing, normalising), for the
        executor to run on its decode threads while the model is busy with the previous chunk; None when there is
        none. ``run`` gives the same outputs with or without it."""
        return None

    @contextlib.contextmanager
    def prepared_inputs(self, prepared: Mapping[int, Any]) -> Iterator[None]:
        """Within the block, an input whose ``id()`` is a key of ``prepared`` is taken as already prepared, with that
        value: what :meth:`prepare` returned for it."""
        with entries_for_block(self._prepared, self._prepared_lock, prepared):
            yield

    def _prepared_value(self, item: InputT) -> Any | None:
        """What the executor prepared ahead for ``item`` (:meth:`prepare`), or None."""
        with self._prepared_lock:
            return self._prepared.get(id(item))

    def _prepared_or(self, item: InputT, prepare: Callable[[InputT], T]) -> T:
        """``item``'s prepared value when the executor made one ahead, otherwise ``prepare(item)`` now."""
        found = self._prepared_value(item)
        return found if found is not None else prepare(item)

    # Options for the warm-up batch (e.g. no voice activity filter, so that a speech model really runs).
    warm_up_options: ClassVar[Mapping[str, Any]] = {}

    def warm_up(self) -> float:
        """Run one small generated input through the model (kernel selection, memory pools); returns seconds."""
        started = time.perf_counter()
        self.run([self._warm_up_input()], self.warm_up_options)
        return time.perf_counter() - started

    def _warm_up_input(self) -> Any:
        if self.consumes is AnalyzerInput.AUDIO:
            import numpy as np

            from gpu_worker.audio import SAMPLE_RATE_HZ, AudioClip

            tone = np.sin(np.linspace(0, 440 * 2 * np.pi, SAMPLE_RATE_HZ, dtype=np.float32)) * 0.1
            return AudioClip(samples=tone.astype(np.float32))
        from PIL import Image

        return Image.new("RGB", (320, 240), (120, 130, 140))

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
    def _run(self, inputs: Sequence[InputT], options: Mapping[str, Any]) -> list[AnalyzerOutput]:
        """Analyze a batch of inputs: RGB images, or audio clips when ``consumes`` is ``AnalyzerInput.AUDIO``."""


@contextlib.contextmanager
def entries_for_block(target: dict[K, V], lock: threading.Lock, entries: Mapping[K, V]) -> Iterator[None]:
    """``entries`` added to ``target`` (under ``lock``) for the length of the block, and removed after it."""
    with lock:
        target.update(entries)
    try:
        yield
    finally:
        with lock:
            for key in entries:
                target.pop(key, None)


def _mean_normalised(vectors: Sequence[Sequence[float]]) -> list[float]:
    dim = len(vectors[0])
    mean = [sum(v[i] for v in vectors) / len(vectors) for i in range(dim)]
    norm = sum(x * x for x in mean) ** 0.5
    return [x / norm for x in mean] if norm > 0 else mean
