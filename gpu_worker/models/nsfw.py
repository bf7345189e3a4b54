"""NSFW analyzer: Yahoo's open_nsfw classifier (a ResNet-50, as ONNX) on onnxruntime.

Each image is prepared the way the model was trained (Yahoo's reference code, which open_nsfw ports keep): resized to
256x256 bilinearly, round-tripped through JPEG, centre-cropped to 224x224, turned into BGR and the Caffe channel means
[104, 117, 123] subtracted. The model answers [sfw, nsfw] probabilities; ``nsfw_score`` is the second.

The clip analyzer uses this class for its ``nsfw_classifier_score``; it also runs on its own as ``nsfw``.
Options (``manifest.options["nsfw"]``): ``model`` (catalog id), ``threshold`` (0.5; at or above it the image is
tagged ``nsfw/explicit``), ``batch_size`` (16).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpu_worker.contract import AnalyzerOutput, MediaKind, TagScore
from gpu_worker.models.base import LOAD_ERRORS, Analyzer, InvalidOptionsError
from gpu_worker.settings import WorkerSettings
from gpu_worker.store import CatalogError, ModelEntry, ModelFamily, ModelStore

log = logging.getLogger(__name__)

ONNX_FORMAT = "onnx"
RESIZE_PX = 256
CROP_PX = 224
# Caffe's BGR channel means of the training set, in 0..255.
BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)
NSFW_COLUMN = 1
DEFAULT_BATCH = 16
# onnxruntime raises its own exception types, derived from Exception alone, for bad models and failed runs.
ORT_ERROR_NAMES = (
    "Fail",
    "InvalidArgument",
    "NoSuchFile",
    "NoModel",
    "EngineError",
    "RuntimeException",
    "InvalidProtobuf",
    "ModelLoaded",
    "NotImplemented",
    "InvalidGraph",
    "EPFail",
)
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(ort_state, name) for name in ORT_ERROR_NAMES if hasattr(ort_state, name)
)


class NsfwOptions(BaseModel):
    """Per-batch options of the NSFW analyzer."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    batch_size: int = Field(default=DEFAULT_BATCH, ge=1, le=1024)


def preprocess(image: Image.Image) -> npt.NDArray[np.float32]:
    """One RGB image as the model's 224x224x3 BGR, mean-subtracted float32 input."""
    resized = image.convert("RGB").resize((RESIZE_PX, RESIZE_PX), Image.Resampling.BILINEAR)
    # The training images went through JPEG at this size; its artefacts move the score measurably.
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG")
    buffer.seek(0)
    with Image.open(buffer) as reread:
        pixels = np.asarray(reread.convert("RGB"), dtype=np.float32)
    offset = (RESIZE_PX - CROP_PX) // 2
    crop = pixels[offset : offset + CROP_PX, offset : offset + CROP_PX, ::-1]
    return np.ascontiguousarray(crop - BGR_MEAN)


def execution_providers(device: str) -> list[str]:
    """CUDA first when asked for and present in this onnxruntime build, then the CPU."""
    available = onnxruntime.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if device.startswith("cuda") else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


class NsfwAnalyzer(Analyzer[Image.Image]):
    """The probability that an image is sexually explicit, from the open_nsfw classifier."""

    name = "nsfw"
    family = ModelFamily.NSFW
    media_kinds = frozenset({MediaKind.IMAGE, MediaKind.VIDEO})
    load_errors = (*LOAD_ERRORS, *ORT_ERRORS)

    def __init__(self, store: ModelStore, model_id: str) -> None:
        super().__init__(store, model_id)
        self._session: Any = None  # onnxruntime.InferenceSession
        self._input_name = ""
        self.providers: list[str] = []

    @classmethod
    def default_model(cls, settings: WorkerSettings) -> str:
        """``settings.nsfw_model``."""
        return settings.nsfw_model

    def _load(self, entry: ModelEntry, folder: Path, device: str) -> None:
        if entry.format != ONNX_FORMAT:
            raise CatalogError(f"model {entry.id} has format {entry.format!r}; the nsfw analyzer reads {ONNX_FORMAT!r}")
        session = onnxruntime.InferenceSession(str(folder / entry.weights.name), providers=execution_providers(device))
        inputs = session.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [CROP_PX, CROP_PX, 3]:
            raise ValueError(f"{entry.weights.name} does not take one NHWC {CROP_PX}x{CROP_PX}x3 input: {inputs}")
        self._session = session
        self._input_name = inputs[0].name
        self.providers = session.get_providers()

    def prepare(self, item: Image.Image) -> npt.NDArray[np.float32]:
        """The image as the classifier's input (the JPEG round trip, crop and channel means), made on a decode
        thread."""
        return preprocess(item)

    def scores(self, images: Sequence[Image.Image], batch_size: int = DEFAULT_BATCH) -> list[float]:
        """The NSFW probability of each image, in order, in micro-batches of ``batch_size``."""
        if self._session is None:
            raise RuntimeError("the nsfw analyzer is not loaded")
        scores: list[float] = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([self._prepared_or(image, preprocess) for image in images[start : start + batch_size]])
            try:
                (probabilities,) = self._session.run(None, {self._input_name: batch})
            except ORT_ERRORS as exc:  # the executor isolates failing items on RuntimeError
                raise RuntimeError(f"onnxruntime failed: {exc}") from exc
            scores.extend(float(p) for p in probabilities[:, NSFW_COLUMN])
        return scores

    @staticmethod
    def parse_options(options: Mapping[str, Any]) -> NsfwOptions:
        """Validate a batch's options; ``InvalidOptionsError`` says what is wrong."""
        try:
            return NsfwOptions.model_validate(dict(options))
        except ValidationError as exc:
            raise InvalidOptionsError(f"invalid nsfw options: {exc}") from exc

    def _run(self, inputs: Sequence[Image.Image], options: Mapping[str, Any]) -> list[AnalyzerOutput]:
        opts = self.parse_options(options)
        outputs = []
        for score in self.scores(inputs, opts.batch_size):
            tags = [TagScore(tag="nsfw/explicit", score=round(score, 6))] if score >= opts.threshold else []
            outputs.append(AnalyzerOutput(model_id=self.model_id, tags=tags, payload={"nsfw_score": round(score, 6)}))
        return outputs

    def aggregate(self, frames: Sequence[tuple[float | None, AnalyzerOutput]]) -> AnalyzerOutput:
        """The base aggregation, plus the highest score of any frame as the video's ``nsfw_score``."""
        output = super().aggregate(frames)
        output.payload["nsfw_score"] = max(o.payload["nsfw_score"] for _, o in frames)
        return output
