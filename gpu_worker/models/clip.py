"""CLIP analyzer: an L2-normalised image embedding, zero-shot tags from a vocabulary, and an NSFW score.

Options (``manifest.options["clip"]``): ``model`` (catalog id), ``vocabulary`` (a name from
``config/vocabularies`` or an inline ``{category: [labels]}``), ``threshold`` (default 0.15), ``top_k`` per
category (default 3), ``batch_size`` (default 32), ``nsfw`` (default true).

``nsfw_score`` comes from CLIP prompts. When ``settings.nsfw_model`` names a classifier (the open_nsfw ONNX model by
default), ``nsfw_classifier_score`` is added from it; if that model cannot be had, CLIP works on and the payload's
``nsfw_classifier_unavailable`` says why.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError

from gpu_worker.contract import AnalyzerOutput, MediaKind, TagScore
from gpu_worker.errors import WorkerError
from gpu_worker.models.base import LOAD_ERRORS, Analyzer, InvalidOptionsError, entries_for_block
from gpu_worker.models.nsfw import NsfwAnalyzer
from gpu_worker.models.open_clip_loader import LoadedClip, load_open_clip
from gpu_worker.settings import WorkerSettings
from gpu_worker.store import ModelEntry, ModelFamily, ModelStore
from gpu_worker.vocabulary import Vocabulary, VocabularyError, inline_vocabulary, load_vocabulary

log = logging.getLogger(__name__)

DEFAULT_VOCABULARY = "default"
# Prompt ensembles for the prompt-based NSFW score (the dedicated classifier adds its own); index 1 is "explicit".
NSFW_PROMPTS: tuple[tuple[str, ...], tuple[str, ...]] = (
    ("a photo.", "a safe for work photo.", "a family friendly photo.", "a photo of people wearing clothes."),
    ("a nude photo.", "an explicit pornographic photo.", "a photo of sexual activity.", "a photo of naked bodies."),
)
TEXT_BATCH = 256
# OpenAI's models learn a scale that is clamped at 100; a softmax sharper than that only hides ties.
MAX_LOGIT_SCALE = 100.0
VOCABULARY_CACHE_SIZE = 16


class ClipOptions(BaseModel):
    """Per-batch options of the CLIP analyzer."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    vocabulary: str | dict[str, Any] = DEFAULT_VOCABULARY
    threshold: float = Field(default=0.15, ge=0.0, le=1.0)
    top_k: int = Field(default=3, ge=1, le=100)
    batch_size: int = Field(default=32, ge=1, le=1024)
    nsfw: bool = True


@dataclass(frozen=True)
class _EncodedCategory:
    """Text embeddings of one category: one row per label, then one per background prompt."""

    names: list[str]
    features: torch.Tensor


class ClipAnalyzer(Analyzer):
    """Embedding, hierarchical zero-shot tags (``category/label``) and ``nsfw_score`` for images and video frames."""

    name = "clip"
    family = ModelFamily.CLIP
    media_kinds = frozenset({MediaKind.IMAGE, MediaKind.VIDEO})
    load_errors = (*LOAD_ERRORS, SafetensorError)

    def __init__(self, store: ModelStore, model_id: str) -> None:
        super().__init__(store, model_id)
        self.settings = store.settings
        self._clip: LoadedClip | None = None
        self._logit_scale = MAX_LOGIT_SCALE
        self._vocab_cache: OrderedDict[str, dict[str, _EncodedCategory]] = OrderedDict()
        self._nsfw_features: torch.Tensor | None = None
        self._cache_lock = threading.Lock()
        self.nsfw_classifier: NsfwAnalyzer | None = None
        self.nsfw_classifier_error: str | None = None
        # id(image) -> the classifier's score, for images another analyzer of this batch already scored.
        self._known_classifier_scores: dict[int, float] = {}

    @classmethod
    def default_model(cls, settings: WorkerSettings) -> str:
        """``settings.clip_model``."""
        return settings.clip_model

    @property
    def clip(self) -> LoadedClip:
        """The loaded open_clip model, preprocessing and tokenizer."""
        return self._loaded()

    @property
    def embed_dim(self) -> int:
        """Length of the image embedding."""
        return self._loaded().embed_dim

    def _load(self, entry: ModelEntry, folder: Path, device: str) -> None:
        clip = load_open_clip(entry, folder, device)
        scale = getattr(clip.model, "logit_scale", None)
        self._logit_scale = min(float(scale.exp()), MAX_LOGIT_SCALE) if scale is not None else MAX_LOGIT_SCALE
        with self._cache_lock:
            self._clip = clip
            self._vocab_cache.clear()
            self._nsfw_features = None
        self._load_nsfw_classifier(device)

    def _load_nsfw_classifier(self, device: str) -> None:
        """Load the configured NSFW classifier; its absence is recorded, never fatal to CLIP."""
        model_id = self.settings.nsfw_model
        self.nsfw_classifier, self.nsfw_classifier_error = None, None
        if not model_id:
            return
        classifier = NsfwAnalyzer(self.store, model_id)
        try:
            classifier.load(device)
        except WorkerError as exc:  # missing or broken weights, an unknown id, a wrong catalog entry
            log.warning("NSFW classifier %s unavailable; CLIP goes on without it: %s", model_id, exc.message)
            self.nsfw_classifier_error = exc.summary
            return
        self.nsfw_classifier = classifier

    @contextlib.contextmanager
    def known_classifier_scores(self, scores: Mapping[int, float]) -> Iterator[None]:
        """Within the block, an image whose ``id()`` is a key of ``scores`` takes that NSFW classifier score instead
        of running the classifier again: the batch's own ``nsfw`` analyzer, with the same model, already scored it.
        """
        with entries_for_block(self._known_classifier_scores, self._cache_lock, scores):
            yield

    def _classifier_scores(
        self, classifier: NsfwAnalyzer, images: Sequence[Image.Image], batch_size: int
    ) -> list[float]:
        with self._cache_lock:
            known = [self._known_classifier_scores.get(id(image)) for image in images]
        missing = [image for image, score in zip(images, known, strict=True) if score is None]
        fresh = iter(classifier.scores(missing, batch_size) if missing else [])
        return [score if score is not None else next(fresh) for score in known]

    def _loaded(self) -> LoadedClip:
        if self._clip is None:
            raise RuntimeError("the CLIP analyzer is not loaded")
        return self._clip

    @staticmethod
    def parse_options(options: Mapping[str, Any]) -> ClipOptions:
        """Validate a batch's options; ``InvalidOptionsError`` says what is wrong."""
        try:
            return ClipOptions.model_validate(dict(options))
        except ValidationError as exc:
            raise InvalidOptionsError(f"invalid clip options: {exc}") from exc

    def vocabulary(self, spec: str | Mapping[str, Any]) -> Vocabulary:
        """A named vocabulary from the settings' folder, or an inline one."""
        try:
            if isinstance(spec, str):
                return load_vocabulary(spec, self.settings.vocabularies_dir)
            return inline_vocabulary(spec)
        except VocabularyError as exc:
            raise InvalidOptionsError(exc.message) from exc

    # encoding

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self._loaded_device(), dtype=torch.float16, enabled=self.half_precision())

    def _loaded_device(self) -> str:
        return torch.device(self.device or "cpu").type

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings, float32 on the CPU."""
        clip = self._loaded()
        chunks = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), TEXT_BATCH):
                tokens = clip.tokenizer(list(texts[start : start + TEXT_BATCH])).to(self.device or "cpu")
                features = clip.model.encode_text(tokens)
                chunks.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        return torch.cat(chunks)

    def prepare(self, item: Image.Image) -> torch.Tensor:
        """The image as the tower's input (resized, centre-cropped, normalised), made on a decode thread."""
        return self._loaded().preprocess(item)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """L2-normalised image embeddings, float32 on the CPU, in micro-batches of ``batch_size``."""
        clip = self._loaded()
        chunks = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                pixels = torch.stack([self._prepared_or(image, clip.preprocess) for image in batch])
                if self._loaded_device() == "cuda":
                    # Page-locked memory lets the copy overlap with the previous micro-batch's kernels.
                    pixels = pixels.pin_memory().to(self.device or "cuda", non_blocking=True)
                features = clip.model.encode_image(pixels.to(self.device or "cpu"))
                chunks.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        return torch.cat(chunks)

    def _ensemble(self, prompt_groups: Sequence[Sequence[str]]) -> torch.Tensor:
        """One embedding per group of prompts: the normalised mean of their embeddings."""
        flat = [prompt for group in prompt_groups for prompt in group]
        encoded = self.encode_texts(flat)
        rows, start = [], 0
        for group in prompt_groups:
            rows.append(encoded[start : start + len(group)].mean(dim=0))
            start += len(group)
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    def _encoded_vocabulary(self, vocabulary: Vocabulary) -> dict[str, _EncodedCategory]:
        key = vocabulary.key
        with self._cache_lock:
            cached = self._vocab_cache.get(key)
            if cached is not None:
                self._vocab_cache.move_to_end(key)
                return cached
        encoded: dict[str, _EncodedCategory] = {}
        for category_name, category in vocabulary.categories.items():
            groups = [[t.format(label.text) for t in category.templates] for label in category.labels]
            groups += [[prompt] for prompt in category.background]
            names = [label.name for label in category.labels]
            encoded[category_name] = _EncodedCategory(names, self._ensemble(groups))
        with self._cache_lock:
            self._vocab_cache[key] = encoded
            while len(self._vocab_cache) > VOCABULARY_CACHE_SIZE:
                self._vocab_cache.popitem(last=False)
        return encoded

    def _nsfw(self) -> torch.Tensor:
        with self._cache_lock:
            if self._nsfw_features is not None:
                return self._nsfw_features
        features = self._ensemble(NSFW_PROMPTS)
        with self._cache_lock:
            self._nsfw_features = features
        return features

    # scoring

    def category_scores(self, image_features: torch.Tensor, category: _EncodedCategory) -> torch.Tensor:
        """Per image, a softmax over the category's labels and background prompts; only label columns returned."""
        logits = self._logit_scale * image_features @ category.features.T
        return logits.softmax(dim=-1)[:, : len(category.names)]

    def _run(self, images: Sequence[Image.Image], options: Mapping[str, Any]) -> list[AnalyzerOutput]:
        opts = self.parse_options(options)
        vocabulary = self.vocabulary(opts.vocabulary)
        categories = self._encoded_vocabulary(vocabulary)
        features = self.encode_images(images, opts.batch_size)
        nsfw_scores: list[float] | None = None
        classifier_scores: list[float] | None = None
        if opts.nsfw:
            nsfw_scores = (self._logit_scale * features @ self._nsfw().T).softmax(dim=-1)[:, 1].tolist()
            if self.nsfw_classifier is not None:
                classifier_scores = self._classifier_scores(self.nsfw_classifier, images, opts.batch_size)

        per_category = {name: self.category_scores(features, cat).tolist() for name, cat in categories.items()}
        outputs = []
        for row, embedding in enumerate(features.tolist()):
            tags: list[TagScore] = []
            top: dict[str, list[dict[str, Any]]] = {}
            for category_name, category in categories.items():
                scores = per_category[category_name][row]
                ranked = sorted(zip(category.names, scores, strict=True), key=lambda pair: -pair[1])[: opts.top_k]
                top[category_name] = [{"label": label, "score": round(score, 6)} for label, score in ranked]
                tags += [
                    TagScore(tag=f"{category_name}/{label}", score=round(score, 6))
                    for label, score in ranked
                    if score >= opts.threshold
                ]
            tags.sort(key=lambda tag: -tag.score)
            payload: dict[str, Any] = {"vocabulary": vocabulary.name, "categories": top}
            if nsfw_scores is not None:
                payload["nsfw_score"] = round(nsfw_scores[row], 6)
                if classifier_scores is not None:
                    payload["nsfw_classifier_score"] = round(classifier_scores[row], 6)
                elif self.nsfw_classifier_error is not None:
                    payload["nsfw_classifier_unavailable"] = self.nsfw_classifier_error
            outputs.append(AnalyzerOutput(model_id=self.model_id, tags=tags, embedding=embedding, payload=payload))
        return outputs

    def aggregate(self, frames: Sequence[tuple[float | None, AnalyzerOutput]]) -> AnalyzerOutput:
        """The base aggregation, plus the highest NSFW scores (prompt-based and classifier) of any frame."""
        output = super().aggregate(frames)
        for key in ("nsfw_score", "nsfw_classifier_score"):
            scores = [o.payload[key] for _, o in frames if key in o.payload]
            if scores:
                output.payload[key] = max(scores)
        unavailable = frames[0][1].payload.get("nsfw_classifier_unavailable")
        if unavailable is not None:
            output.payload["nsfw_classifier_unavailable"] = unavailable
        output.payload["vocabulary"] = frames[0][1].payload.get("vocabulary")
        return output
