"""Objects analyzer: ultralytics YOLO detections, one tag per detected label, and a count of the people in view.

Options (``manifest.options["objects"]``): ``model`` (catalog id), ``conf`` (default 0.25), ``iou`` (NMS, default
0.7), ``max_det`` (default 300), ``imgsz`` (longest input side in pixels, default 640), ``classes`` (class ids or
labels to keep; default all), ``batch_size`` (default 16). The defaults are those of ultralytics' predictor: at an
IoU of 0.45, people standing close together merge into one (bus.jpg loses one of its four).

A catalog entry may rename the model's classes and say which of them are people, in ``[model.options]``:
``labels = { 0 = "person", 1 = "person" }`` and ``person_classes = [0, 1]`` (default: the classes labelled
``person``). Classes that share a label are suppressed against each other, so one person is counted once even when
the model proposes both of its person classes for them.

Boxes are ``[x1, y1, x2, y2]`` relative to the analyzed image, so they do not depend on how it was scaled.
"""

from __future__ import annotations

import importlib
import platform
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpu_worker.contract import AnalyzerOutput, MediaKind, TagScore
from gpu_worker.errors import WorkerError
from gpu_worker.models.base import Analyzer, InvalidOptionsError
from gpu_worker.offline import enforce_offline_libraries
from gpu_worker.settings import WorkerSettings
from gpu_worker.store import CatalogError, ModelEntry, ModelFamily, ModelStore
from gpu_worker.torch_compat import ensure_torchvision_ops

PERSON_LABEL = "person"
# The grey ultralytics pads letterboxed images with; the models were trained on it.
PAD_VALUE = 114
# Candidates above ``conf`` that enter NMS at most, highest scores first (as ultralytics does).
MAX_NMS_CANDIDATES = 30_000
# People tags by count: 0 none, 1 solo, 2 pair, 3 or more group.
GROUP_MIN_PEOPLE = 3
SCORE_DIGITS = 6
DEFAULT_IMGSZ = 640
# Tasks whose heads put xywh boxes and class scores first; classify and obb models have other outputs.
DETECTING_TASKS = frozenset({"detect", "segment", "pose"})

# One image's detections in CPU memory: boxes [n, 4] (letterboxed xyxy), scores [n], class ids [n], and the best
# score any candidate had for a person class (what "people/none" is scored against).
Detections = tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]


class ObjectsOptions(BaseModel):
    """Per-batch options of the objects analyzer."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    conf: float = Field(default=0.25, ge=0.0, le=1.0)
    iou: float = Field(default=0.7, ge=0.0, le=1.0)
    max_det: int = Field(default=300, ge=1, le=10_000)
    imgsz: int = Field(default=DEFAULT_IMGSZ, ge=32, le=4096)
    classes: list[int | str] | None = None
    batch_size: int = Field(default=16, ge=1, le=1024)


class YoloEntryOptions(BaseModel):
    """What a catalog entry's ``[model.options]`` may say about a YOLO model's classes."""

    model_config = ConfigDict(extra="forbid")

    labels: dict[int, str] = Field(default_factory=dict)
    person_classes: list[int] | None = None


@dataclass(frozen=True)
class ClassMap:
    """The model's classes: its own names, our labels for them, and which are people."""

    model_names: dict[int, str]
    labels: dict[int, str]
    person_classes: frozenset[int]

    @classmethod
    def build(cls, entry: ModelEntry, model_names: Mapping[int, str]) -> ClassMap:
        """Apply the entry's options to the model's names; ``CatalogError`` for ids the model does not have."""
        try:
            options = YoloEntryOptions.model_validate(entry.options)
        except ValidationError as exc:
            raise CatalogError(f"model {entry.id}: invalid options: {exc}") from exc
        names = dict(model_names)
        unknown = sorted((set(options.labels) | set(options.person_classes or [])) - set(names))
        if unknown:
            raise CatalogError(f"model {entry.id}: class ids {unknown} are not among the model's {sorted(names)}")
        labels = {class_id: options.labels.get(class_id, name) for class_id, name in names.items()}
        if options.person_classes is None:
            persons = frozenset(i for i, label in labels.items() if label == PERSON_LABEL)
        else:
            persons = frozenset(options.person_classes)
        return cls(model_names=names, labels=labels, person_classes=persons)

    def resolve(self, wanted: Sequence[int | str]) -> frozenset[int]:
        """Class ids named by id, by our label or by the model's own name; ``InvalidOptionsError`` for others."""
        ids: set[int] = set()
        for item in wanted:
            if isinstance(item, int):
                matches = {item} if item in self.labels else set()
            else:
                matches = {i for i in self.labels if item in (self.labels[i], self.model_names[i])}
            if not matches:
                known = ", ".join(f"{i}={label}" for i, label in sorted(self.labels.items()))
                raise InvalidOptionsError(f"invalid objects options: no class {item!r} in this model ({known})")
            ids |= matches
        return frozenset(ids)


@dataclass(frozen=True)
class Letterbox:
    """How one image was fitted into the model input: its size, its scaled size and the padding, in pixels."""

    width: int
    height: int
    scaled_width: int
    scaled_height: int
    pad_x: int
    pad_y: int
    input_width: int
    input_height: int

    @classmethod
    def fit(cls, width: int, height: int, size: int, stride: int) -> Letterbox:
        """Scale to fit a ``size`` square, keeping the aspect ratio, then pad to the next multiple of ``stride``.

        This is ultralytics' ``LetterBox(auto=True)``, what its predictor does for an image: the input is the
        smallest rectangle the model accepts rather than the full square, faster and what the models are used with.
        """
        gain = min(size / height, size / width)
        new_w, new_h = max(round(width * gain), 1), max(round(height * gain), 1)
        extra_w, extra_h = (size - new_w) % stride, (size - new_h) % stride
        pad_x, pad_y = round(extra_w / 2 - 0.1), round(extra_h / 2 - 0.1)
        return cls(width, height, new_w, new_h, pad_x, pad_y, new_w + extra_w, new_h + extra_h)

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the model input; images with the same shape share a forward pass."""
        return self.input_height, self.input_width


def letterbox(image: Image.Image, geometry: Letterbox) -> np.ndarray:
    """The ``[H, W, 3]`` uint8 model input for ``image``: resized and padded with ultralytics' grey."""
    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    scaled = (geometry.scaled_width, geometry.scaled_height)
    if scaled != (geometry.width, geometry.height):
        rgb = cv2.resize(rgb, scaled, interpolation=cv2.INTER_LINEAR)
    canvas = np.full((geometry.input_height, geometry.input_width, 3), PAD_VALUE, dtype=np.uint8)
    canvas[geometry.pad_y : geometry.pad_y + scaled[1], geometry.pad_x : geometry.pad_x + scaled[0]] = rgb
    return canvas


def normalised_boxes(boxes: torch.Tensor, geometry: Letterbox) -> torch.Tensor:
    """Map ``[N, 4]`` xyxy boxes in model-input pixels to ``[0, 1]`` coordinates of the original image."""
    out = boxes.clone()
    out[:, [0, 2]] = ((out[:, [0, 2]] - geometry.pad_x) / geometry.scaled_width).clamp(0.0, 1.0)
    out[:, [1, 3]] = ((out[:, [1, 3]] - geometry.pad_y) / geometry.scaled_height).clamp(0.0, 1.0)
    return out


def people_tag(scores: Sequence[float], best_candidate: float) -> TagScore:
    """``people/none|solo|pair|group`` for the person scores of one image, sorted high to low.

    A count tag scores as the weakest detection it relies on (the 3rd person for a group); ``none`` as one minus the
    best person candidate, detected or not.
    """
    count = len(scores)
    if count == 0:
        return TagScore(tag="people/none", score=round(1.0 - best_candidate, SCORE_DIGITS))
    name = {1: "solo", 2: "pair"}.get(count, "group")
    return TagScore(tag=f"people/{name}", score=round(scores[min(count, GROUP_MIN_PEOPLE) - 1], SCORE_DIGITS))


def import_ultralytics(settings: WorkerSettings) -> ModuleType:
    """Import ``ultralytics.nn.tasks`` so that it can neither download nor write into the user's home folder.

    Weights come from the model store only: ``YOLO_OFFLINE`` stops ultralytics' own downloads, dependency
    installs and telemetry; its settings file goes under the model cache unless ``YOLO_CONFIG_DIR`` is set.
    """
    enforce_offline_libraries(settings)
    try:
        ensure_torchvision_ops()
        tasks = importlib.import_module("ultralytics.nn.tasks")
    except ImportError as exc:
        raise WorkerError(
            f"the objects analyzer needs the ultralytics package ({exc}); install the worker extra: "
            "pip install 'ai-media-analysis[worker]'"
        ) from exc
    _undo_image_open_patch()
    return tasks


def _undo_image_open_patch() -> None:
    """Give ``PIL.Image.open`` back its own behaviour, which importing ultralytics replaces process-wide.

    The replacement answers a file Pillow cannot identify by trying to pip-install pi-heif and raising
    ``ModuleNotFoundError`` instead of ``UnidentifiedImageError``: corrupt uploads would stop getting their decode
    error. HEIC is decoded by pillow-heif in this worker anyway.
    """
    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is getattr(patches, "image_open", None):
        Image.open = original


class ObjectsAnalyzer(Analyzer[Image.Image]):
    """YOLO detections (``objects/<label>`` tags), a person count and ``people/*`` tags for images and video frames."""

    name = "objects"
    family = ModelFamily.OBJECTS
    media_kinds = frozenset({MediaKind.IMAGE, MediaKind.VIDEO})

    def __init__(self, store: ModelStore, model_id: str) -> None:
        super().__init__(store, model_id)
        self._model: torch.nn.Module | None = None
        self._classes: ClassMap | None = None
        self._dtype = torch.float32
        self._memory_format = torch.contiguous_format
        self._end2end = False
        # ultralytics' detection head caches anchors per input shape; one forward at a time keeps that consistent.
        self._forward_lock = threading.Lock()

    @classmethod
    def default_model(cls, settings: WorkerSettings) -> str:
        """``settings.objects_model``."""
        return settings.objects_model

    @property
    def classes(self) -> ClassMap:
        """The loaded model's classes, labels and person classes."""
        if self._classes is None:
            raise RuntimeError("the objects analyzer is not loaded")
        return self._classes

    def _load(self, entry: ModelEntry, folder: Path, device: str) -> None:
        tasks = import_ultralytics(self.store.settings)
        # load_checkpoint is the newer name of attempt_load_one_weight; both return (model, checkpoint).
        loader = getattr(tasks, "load_checkpoint", None) or tasks.attempt_load_one_weight
        try:
            model, _ = loader(str(folder / entry.weights.name), device=torch.device(device), inplace=True, fuse=True)
        except (TypeError, ImportError) as exc:
            # How ultralytics reports a file that is no checkpoint, or a pickle naming a module it lacks; as a
            # ValueError it is a load error, and the base class fetches the file once more.
            raise ValueError(f"{entry.weights.name} is not a loadable ultralytics checkpoint: {exc}") from exc
        task = getattr(model, "task", "detect")
        if task not in DETECTING_TASKS:
            raise CatalogError(f"model {entry.id} is a YOLO {task} model; the objects analyzer needs a detection model")
        names = model.names if isinstance(model.names, dict) else dict(enumerate(model.names))
        classes = ClassMap.build(entry, {int(k): str(v) for k, v in names.items()})
        model.requires_grad_(False)
        # Detection scores survive float16 (bench/half_precision.py); a CPU computes in float32 unless told otherwise.
        self._dtype = torch.float16 if self.half_precision(device) else torch.float32
        self._memory_format = torch.channels_last if _channels_last_helps(device) else torch.contiguous_format
        self._model = model.to(dtype=self._dtype, memory_format=self._memory_format)
        self._classes = classes
        self._end2end = bool(getattr(model, "end2end", False))

    @staticmethod
    def parse_options(options: Mapping[str, Any]) -> ObjectsOptions:
        """Validate a batch's options; ``InvalidOptionsError`` says what is wrong."""
        try:
            return ObjectsOptions.model_validate(dict(options))
        except ValidationError as exc:
            raise InvalidOptionsError(f"invalid objects options: {exc}") from exc

    def _forward(self, pixels: torch.Tensor, device: str) -> torch.Tensor:
        """Raw float32 predictions for a ``[B, 3, H, W]`` uint8 batch in CPU memory."""
        if self._model is None:
            raise RuntimeError("the objects analyzer is not loaded")
        if torch.device(device).type == "cuda":
            pixels = pixels.pin_memory().to(device, non_blocking=True)
        batch = pixels.to(self._dtype).div_(255.0).contiguous(memory_format=self._memory_format)
        with self._forward_lock, torch.inference_mode():
            out = self._model(batch)
        prediction: torch.Tensor = out[0] if isinstance(out, tuple | list) else out
        return prediction.float()

    def _run(self, inputs: Sequence[Image.Image], options: Mapping[str, Any]) -> list[AnalyzerOutput]:
        opts = self.parse_options(options)
        classes = self.classes
        allowed = classes.resolve(opts.classes) if opts.classes is not None else frozenset(classes.labels)
        stride = self._stride()
        size = _stride_multiple(opts.imgsz, stride)
        geometries = [Letterbox.fit(image.width, image.height, size, stride) for image in inputs]
        # Images batch with others of the same input shape, so an image's result never depends on its batch-mates.
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, geometry in enumerate(geometries):
            by_shape.setdefault(geometry.input_shape, []).append(index)
        outputs: dict[int, AnalyzerOutput] = {}
        for indices in by_shape.values():
            for start in range(0, len(indices), opts.batch_size):
                chunk = indices[start : start + opts.batch_size]
                pixels = np.stack([self._letterboxed(inputs[i], geometries[i]) for i in chunk])
                prediction = self._forward(torch.from_numpy(pixels).permute(0, 3, 1, 2), self.device or "cpu")
                for index, found in zip(chunk, self._detections(prediction, opts, allowed), strict=True):
                    outputs[index] = self._output(found, geometries[index], opts, allowed)
        return [outputs[index] for index in range(len(inputs))]

    def prepare(self, item: Image.Image) -> tuple[Letterbox, np.ndarray]:
        """The image letterboxed for the default input size (``imgsz`` 640), made on a decode thread; a batch that
        asks for another size letterboxes its images again in ``run``."""
        stride = self._stride()
        geometry = Letterbox.fit(item.width, item.height, _stride_multiple(DEFAULT_IMGSZ, stride), stride)
        return geometry, letterbox(item, geometry)

    def _letterboxed(self, image: Image.Image, geometry: Letterbox) -> np.ndarray:
        ready = self._prepared_value(image)
        if ready is not None and ready[0] == geometry:
            return ready[1]  # type: ignore[no-any-return]
        return letterbox(image, geometry)

    def _stride(self) -> int:
        stride = getattr(self._model, "stride", None)
        return int(stride.max()) if isinstance(stride, torch.Tensor) else 32

    def _detections(self, prediction: torch.Tensor, opts: ObjectsOptions, allowed: frozenset[int]) -> list[Detections]:
        """Each image's detections from a batch's raw predictions (``[B, ...]``), in CPU memory."""
        people = self.classes.person_classes & allowed
        if self._end2end:
            return [_end2end_detections(row, opts, allowed, people) for row in prediction]
        return self._nms_detections(prediction, opts, allowed, people)

    def _output(
        self, found: Detections, geometry: Letterbox, opts: ObjectsOptions, allowed: frozenset[int]
    ) -> AnalyzerOutput:
        classes = self.classes
        people = classes.person_classes & allowed
        boxes, scores, class_ids, best_person = found
        normalised = normalised_boxes(boxes, geometry)
        detections: list[dict[str, Any]] = []
        best: dict[str, float] = {}
        counts: dict[str, int] = {}
        person_scores: list[float] = []
        for box, score, class_id in zip(normalised.tolist(), scores.tolist(), class_ids.tolist(), strict=True):
            label = classes.labels[class_id]
            detections.append(
                {
                    "label": label,
                    "class_id": class_id,
                    "class_name": classes.model_names[class_id],
                    "score": round(score, SCORE_DIGITS),
                    "box": [round(v, SCORE_DIGITS) for v in box],
                }
            )
            best[label] = max(best.get(label, 0.0), score)
            counts[label] = counts.get(label, 0) + 1
            if class_id in people:
                person_scores.append(score)
        tags = [TagScore(tag=f"objects/{label}", score=round(score, SCORE_DIGITS)) for label, score in best.items()]
        person_count: int | None = None
        if people:
            person_count = len(person_scores)
            tags.append(people_tag(person_scores, best_person))
        tags.sort(key=lambda tag: (-tag.score, tag.tag))
        payload: dict[str, Any] = {
            "image_width": geometry.width,
            "image_height": geometry.height,
            "detections": detections,
            "counts": counts,
            "person_count": person_count,
            "conf": opts.conf,
        }
        return AnalyzerOutput(model_id=self.model_id, tags=tags, payload=payload)

    def _nms_detections(
        self, prediction: torch.Tensor, opts: ObjectsOptions, allowed: frozenset[int], people: frozenset[int]
    ) -> list[Detections]:
        """Per image: boxes (letterboxed xyxy), scores and class ids after NMS, from ``[B, 4 + nc + extra, anchors]``.

        Scoring, thresholds and the copy back to the CPU run once for the batch; NMS and its ordering run per image on
        that image's candidates alone, so an image's detections do not depend on its batch-mates.
        """
        import torchvision

        classes = self.classes
        candidates = prediction.transpose(1, 2)  # [B, anchors, 4 + nc + extra]
        class_scores = candidates[..., 4 : 4 + len(classes.labels)]
        best_person = torch.zeros(len(prediction), device=prediction.device)
        if people and class_scores.shape[1]:
            best_person = class_scores[..., sorted(people)].amax(dim=(1, 2))
        scores, class_ids = class_scores.max(dim=2)
        keep = scores > opts.conf
        if len(allowed) < len(classes.labels):
            keep &= torch.isin(class_ids, torch.tensor(sorted(allowed), device=class_ids.device))
        image, anchor = keep.nonzero(as_tuple=True)  # by image, then by anchor
        boxes = _xywh_to_xyxy(candidates[image, anchor, :4])
        scores, class_ids = scores[image, anchor], class_ids[image, anchor]
        groups = _label_groups(classes, class_ids)
        kept_per_image = []
        start = 0
        for count in torch.bincount(image, minlength=len(prediction)).tolist():
            rows: slice | torch.Tensor = slice(start, start + count)
            if count > MAX_NMS_CANDIDATES:
                rows = start + scores[rows].argsort(descending=True)[:MAX_NMS_CANDIDATES]
            own_scores = scores[rows]
            kept = torchvision.ops.batched_nms(boxes[rows], own_scores, groups[rows], opts.iou).sort().values
            # batched_nms orders equal scores arbitrarily on large inputs; candidate order breaks ties reproducibly.
            kept = kept[own_scores[kept].sort(descending=True, stable=True).indices][: opts.max_det]
            kept_per_image.append(rows[kept] if isinstance(rows, torch.Tensor) else kept + start)
            start += count
        kept = torch.cat(kept_per_image)
        sizes = [len(k) for k in kept_per_image]
        per_image = zip(
            torch.split(boxes[kept].cpu(), sizes),
            torch.split(scores[kept].cpu(), sizes),
            torch.split(class_ids[kept].cpu(), sizes),
            best_person.tolist(),
            strict=True,
        )
        return [(b, s, c, float(p)) for b, s, c, p in per_image]

    def aggregate(self, frames: Sequence[tuple[float | None, AnalyzerOutput]]) -> AnalyzerOutput:
        """One output per video: highest score per label, the most people in any frame, every frame's detections."""
        if not frames:
            raise ValueError("no frames to aggregate")
        best: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _, output in frames:
            for tag in output.tags:
                if tag.tag.startswith("objects/"):
                    best[tag.tag] = max(best.get(tag.tag, 0.0), tag.score)
            for label, count in output.payload["counts"].items():
                counts[label] = max(counts.get(label, 0), count)
        tags = [TagScore(tag=t, score=s) for t, s in best.items()]
        person_counts = [o.payload["person_count"] for _, o in frames if o.payload["person_count"] is not None]
        person_count = max(person_counts) if person_counts else None
        if person_count is not None:
            # The tag of the most crowded frame; for "none", the frame least sure of it.
            frame_tags = [t for _, o in frames if o.payload["person_count"] == person_count for t in o.tags]
            people = [t for t in frame_tags if t.tag.startswith("people/")]
            pick = min if person_count == 0 else max
            tags.append(TagScore(tag=people[0].tag, score=pick(t.score for t in people)))
        tags.sort(key=lambda tag: (-tag.score, tag.tag))
        per_frame = [
            {
                "timestamp_s": ts,
                "person_count": o.payload["person_count"],
                "detections": o.payload["detections"],
                "image_width": o.payload["image_width"],
                "image_height": o.payload["image_height"],
            }
            for ts, o in frames
        ]
        payload: dict[str, Any] = {"person_count": person_count, "counts": counts, "frames": per_frame}
        return AnalyzerOutput(model_id=frames[0][1].model_id, tags=tags, payload=payload)


def _end2end_detections(
    prediction: torch.Tensor, opts: ObjectsOptions, allowed: frozenset[int], people: frozenset[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Detections from an NMS-free head (YOLOv10, YOLO26): ``[k, 6 + extra]`` rows of xyxy, score, class."""
    scores, class_ids = prediction[:, 4], prediction[:, 5].long()
    is_person = torch.isin(class_ids, torch.tensor(sorted(people), dtype=torch.long, device=class_ids.device))
    best_person = float(scores[is_person].max()) if bool(is_person.any()) else 0.0
    keep = (scores > opts.conf) & torch.isin(
        class_ids, torch.tensor(sorted(allowed), dtype=torch.long, device=class_ids.device)
    )
    index = keep.nonzero().flatten()
    index = index[scores[index].argsort(descending=True, stable=True)][: opts.max_det]
    return prediction[index, :4].cpu(), scores[index].cpu(), class_ids[index].cpu(), best_person


def _channels_last_helps(device: str) -> bool:
    """Channels-last convolutions are faster on a GPU and, through oneDNN, on x86 CPUs (ultralytics' own rule)."""
    if torch.device(device).type == "cuda":
        return True
    return platform.machine() in {"AMD64", "x86_64"} and torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]


def _xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    centre, half = boxes[:, :2], boxes[:, 2:4] / 2
    return torch.cat((centre - half, centre + half), dim=1)


def _label_groups(classes: ClassMap, class_ids: torch.Tensor) -> torch.Tensor:
    """One NMS group per label, so classes renamed to the same label suppress each other."""
    group_of_label: dict[str, int] = {}
    table = [
        group_of_label.setdefault(classes.labels.get(i, str(i)), len(group_of_label))
        for i in range(max(classes.labels) + 1)
    ]
    return torch.tensor(table, dtype=torch.long, device=class_ids.device)[class_ids]


def _stride_multiple(size: int, stride: int) -> int:
    """The smallest multiple of the model's stride at least ``size`` (input sides must divide by it)."""
    return max(stride, -(-size // stride) * stride)
