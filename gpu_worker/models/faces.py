"""Faces analyzer: MTCNN face detection and a 512-d FaceNet (InceptionResnetV1) embedding per face.

The analyzer's model is the embedder (``settings.faces_model`` or the batch's ``model`` option); every embedder shares
the detector ``settings.face_detector_model``. Both are resolved through the model store and loaded from its verified
files, never from facenet-pytorch's own paths or downloads.

Options (``manifest.options["faces"]``): ``model`` (embedder catalog id), ``min_face_size`` (pixels of the analyzed
image, default 20: smaller faces are neither searched for nor reported), ``min_probability`` (default 0.9),
``thresholds`` (MTCNN's three stage thresholds, default 0.6, 0.7, 0.7), ``embeddings`` (default true) and
``batch_size`` (faces per embedder pass, default 32).

Per image the payload holds ``face_count``, ``image_width``/``image_height`` and ``faces``, largest first, each with
``box`` (x1, y1, x2, y2), ``landmarks`` (left eye, right eye, nose, left and right mouth corner as seen in the image,
each x, y), all normalised to [0, 1] of the analyzed image, ``probability``, ``size_px`` (shorter box side) and
``embedding`` (L2-normalised). Tags: ``faces/none``, ``faces/one`` or ``faces/several``, and ``faces/count/<n>``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpu_worker.contract import AnalyzerOutput, MediaKind, TagScore
from gpu_worker.errors import ModelLoadError, ModelUnavailableError
from gpu_worker.models.base import Analyzer, InvalidOptionsError
from gpu_worker.models.mtcnn import detect_faces
from gpu_worker.settings import WorkerSettings
from gpu_worker.store import ModelEntry, ModelFamily, ModelState, ModelStore, PinState
from gpu_worker.torch_compat import ensure_torchvision_ops

DETECTOR_FORMAT = "facenet_mtcnn"
EMBEDDER_FORMAT = "facenet_inception_resnet_v1"
DETECTOR_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
EMBEDDING_DIM = 512
CROP_SIZE_PX = 160
# The embedder's input standardisation: (v - 127.5) / 128 for pixel values 0-255.
PIXEL_CENTRE = 127.5
PIXEL_SCALE = 128.0
# Threads that cut and resize face crops for the embedder, at most.
CROP_THREADS_MAX = 8
# MTCNN's image-pyramid scale step, as facenet-pytorch and the original paper use it.
PYRAMID_FACTOR = 0.709
# Images of one size per MTCNN pass, by device type. On CUDA a batch cuts the tensor operations (kernel launches) per
# image about sixfold (bench/mtcnn.py). On a CPU a batch of 960x540 pictures is slower than one after another (45.5
# against 36.0 ms per image for 8 generated 1080p JPEGs: the pyramid of several pictures no longer stays in cache).
DETECT_BATCH_IMAGES = {"cuda": 16, "cpu": 1}
# Keys of the classifier head that the published VGGFace2 state dict carries; embeddings do not use it.
CLASSIFIER_PREFIX = "logits."
SCORE_DIGITS = 6

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class FacesOptions(BaseModel):
    """Per-batch options of the faces analyzer."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    # MTCNN's smallest pyramid scale is 12 px; a smaller minimum would upsample the whole image.
    min_face_size: int = Field(default=20, ge=12, le=4096)
    min_probability: Probability = 0.9
    thresholds: tuple[Probability, Probability, Probability] = (0.6, 0.7, 0.7)
    embeddings: bool = True
    batch_size: int = Field(default=32, ge=1, le=1024)


@dataclass(frozen=True)
class DetectedFace:
    """One face in pixels of the analyzed image: box (x1, y1, x2, y2), five landmarks (x, y), probability."""

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    probability: float

    @property
    def size_px(self) -> float:
        """The shorter side of the box."""
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])

    @property
    def area_px(self) -> float:
        """The box's area."""
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass
class _Detections:
    """What MTCNN found in one image: the faces kept, and the best probability of any candidate (kept or not)."""

    faces: list[DetectedFace]
    best_candidate: float


@dataclass(frozen=True)
class MtcnnNets:
    """MTCNN's three cascaded networks, in eval mode on the analyzer's device."""

    pnet: torch.nn.Module
    rnet: torch.nn.Module
    onet: torch.nn.Module


def import_facenet() -> ModuleType:
    """Import facenet_pytorch once torchvision's NMS works here (its detector calls ``batched_nms``)."""
    ensure_torchvision_ops()
    return importlib.import_module("facenet_pytorch")


def load_detector(folder: Path, device: str) -> MtcnnNets:
    """P-, R- and O-net from the state dicts ``pnet.pt``, ``rnet.pt``, ``onet.pt`` in ``folder``, in eval mode."""
    facenet = import_facenet()
    nets = []
    for cls, name in zip((facenet.PNet, facenet.RNet, facenet.ONet), DETECTOR_FILES, strict=True):
        net = cls(pretrained=False)
        net.load_state_dict(torch.load(folder / name, map_location="cpu", weights_only=True), strict=True)
        net.eval().requires_grad_(False)
        nets.append(net.to(device))
    return MtcnnNets(*nets)


def load_embedder(path: Path, device: str) -> torch.nn.Module:
    """InceptionResnetV1 (embedding head only) from a state dict such as facenet-pytorch's VGGFace2 release."""
    facenet = import_facenet()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    weights = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIX)}
    model: torch.nn.Module = facenet.InceptionResnetV1(pretrained=None, classify=False)
    model.load_state_dict(weights, strict=True)
    model.eval().requires_grad_(False)
    model = model.to(device)
    with torch.inference_mode():
        probe = model(torch.zeros(1, 3, CROP_SIZE_PX, CROP_SIZE_PX, device=device))
    if probe.shape != (1, EMBEDDING_DIM) or not bool(torch.isfinite(probe).all()):
        raise ValueError(f"{path.name} does not give finite {EMBEDDING_DIM}-d embeddings")
    return model


class FacesAnalyzer(Analyzer[Image.Image]):
    """Face boxes, landmarks, probabilities and 512-d embeddings for images and video frames."""

    name = "faces"
    family = ModelFamily.FACES
    media_kinds = frozenset({MediaKind.IMAGE, MediaKind.VIDEO})

    def __init__(self, store: ModelStore, model_id: str) -> None:
        super().__init__(store, model_id)
        self.detector_id = store.settings.face_detector_model
        self._detector: MtcnnNets | None = None
        self._embedder: torch.nn.Module | None = None
        # Threads start on first use and wait idle between batches.
        self._crop_pool = ThreadPoolExecutor(
            max_workers=min(CROP_THREADS_MAX, os.cpu_count() or 1), thread_name_prefix="gpuw-face-crop"
        )

    @classmethod
    def default_model(cls, settings: WorkerSettings) -> str:
        """``settings.faces_model`` (the embedder)."""
        return settings.faces_model

    # loading

    def _load(self, entry: ModelEntry, folder: Path, device: str) -> None:
        if entry.format != EMBEDDER_FORMAT:
            raise ModelLoadError(
                entry.id,
                f"Model {entry.id!r} has format {entry.format!r}; the faces analyzer reads {EMBEDDER_FORMAT!r}",
            )
        try:
            import_facenet()
        except ImportError as exc:
            raise ModelUnavailableError(
                entry.id,
                f"The faces analyzer needs facenet-pytorch and torchvision ({exc}); install them with "
                "`pip install torchvision` and `pip install --no-deps facenet-pytorch`.",
            ) from exc
        detector = self._load_detector(device)
        embedder = load_embedder(folder / entry.weights.name, device)
        self._detector, self._embedder = detector, embedder

    def _load_detector(self, device: str) -> MtcnnNets:
        """The detector, with the base class's rule for its files: one fetch again unless they are the published ones.

        Its failures become ``ModelLoadError`` so that the base class does not clear the embedder's cache for them.
        """
        entry = self.store.entry(self.detector_id)
        if entry.family is not ModelFamily.FACES or entry.format != DETECTOR_FORMAT:
            raise ModelLoadError(
                entry.id, f"Face detector {entry.id!r} is a {entry.family}/{entry.format} model, not {DETECTOR_FORMAT}"
            )
        folder = self.store.resolve(entry.id)
        try:
            return load_detector(folder, device)
        except self.load_errors as first:
            state = self.store.verify(entry.id)  # removes files that fail their checksum
            if state is ModelState.PRESENT:
                if self.store.pin_state(entry.id) is PinState.CATALOG:
                    raise ModelLoadError(
                        entry.id,
                        f"Face detector {entry.id!r} has intact files in {folder} but cannot be loaded: {first}",
                    ) from first
                self.store.invalidate(entry.id)
            folder = self.store.resolve(entry.id)
            try:
                return load_detector(folder, device)
            except self.load_errors as second:
                raise ModelLoadError(
                    entry.id,
                    f"Face detector {entry.id!r} cannot be loaded from {folder}, even after fetching it again: "
                    f"{second}",
                ) from second

    def _models(self) -> tuple[MtcnnNets, torch.nn.Module]:
        if self._detector is None or self._embedder is None:
            raise RuntimeError("the faces analyzer is not loaded")
        return self._detector, self._embedder

    @staticmethod
    def parse_options(options: Mapping[str, Any]) -> FacesOptions:
        """Validate a batch's options; ``InvalidOptionsError`` says what is wrong."""
        try:
            return FacesOptions.model_validate(dict(options))
        except ValidationError as exc:
            raise InvalidOptionsError(f"invalid faces options: {exc}") from exc

    # inference

    def _torch_device(self) -> torch.device:
        return torch.device(self.device or "cpu")

    def detect(self, images: Sequence[Image.Image], options: FacesOptions | None = None) -> list[list[DetectedFace]]:
        """Faces per image, largest first, above the options' minimum size and probability (pixel coordinates)."""
        return [found.faces for found in self._detect(images, options or FacesOptions())]

    def _detect(self, images: Sequence[Image.Image], opts: FacesOptions) -> list[_Detections]:
        detector, _ = self._models()
        device = self._torch_device()
        images = [_rgb(image) for image in images]
        results = [_Detections([], 0.0) for _ in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            # An image whose shorter side is below the minimum face size cannot hold one (and has no pyramid).
            if min(image.size) >= opts.min_face_size:
                by_size.setdefault(image.size, []).append(index)
        batch = DETECT_BATCH_IMAGES.get(device.type, 1)
        for indices in by_size.values():
            for start in range(0, len(indices), batch):
                chunk = indices[start : start + batch]
                found = detect_faces(
                    [images[i] for i in chunk],
                    detector,
                    min_face_size=opts.min_face_size,
                    thresholds=opts.thresholds,
                    factor=PYRAMID_FACTOR,
                    device=device,
                )
                for index, faces in zip(chunk, found, strict=True):
                    results[index] = _select(faces.boxes, faces.points, opts)
        return results

    def embed(self, faces: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """L2-normalised 512-d embeddings of face crops (any size; resized to 160 px), float32 on the CPU."""
        return self._embed_pixels(self._face_pixels([(_rgb(face), (0, 0, *face.size)) for face in faces]), batch_size)

    def _face_pixels(self, boxes: Sequence[tuple[Image.Image, Sequence[float]]]) -> list[np.ndarray]:
        """Each box of its image cut out and resized for the embedder, on the crop threads (Pillow lets go of the
        GIL while it resizes, so crops made for one batch run side by side)."""
        if len(boxes) < 2:
            return [face_pixels(image, box) for image, box in boxes]
        return list(self._crop_pool.map(lambda item: face_pixels(*item), boxes))

    def _embed_pixels(self, crops: Sequence[np.ndarray], batch_size: int) -> torch.Tensor:
        _, embedder = self._models()
        device = self._torch_device()
        if not crops:
            return torch.empty(0, EMBEDDING_DIM)
        chunks = []
        with (
            torch.inference_mode(),
            torch.autocast(device_type=device.type, dtype=torch.float16, enabled=self.half_precision()),
        ):
            for start in range(0, len(crops), batch_size):
                # uint8 to the device (a quarter of the bytes of float32), standardised there in one pass.
                pixels = torch.from_numpy(np.stack(crops[start : start + batch_size])).to(device, non_blocking=True)
                pixels = (pixels.permute(0, 3, 1, 2).contiguous().float() - PIXEL_CENTRE) / PIXEL_SCALE
                features = embedder(pixels)
                chunks.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        return torch.cat(chunks)

    def _run(self, images: Sequence[Image.Image], options: Mapping[str, Any]) -> list[AnalyzerOutput]:
        opts = self.parse_options(options)
        images = [_rgb(image) for image in images]
        detections = self._detect(images, opts)
        embeddings: list[list[list[float]]] = [[] for _ in images]
        if opts.embeddings:
            # Every face of the batch goes through the embedder together, in micro-batches of batch_size.
            owners = [index for index, found in enumerate(detections) for _ in found.faces]
            boxes = [(images[index], face.box) for index, found in enumerate(detections) for face in found.faces]
            vectors = self._embed_pixels(self._face_pixels(boxes), opts.batch_size).tolist()
            for owner, vector in zip(owners, vectors, strict=True):
                embeddings[owner].append(vector)
        return [
            self._output(image, found, embeddings[index], opts)
            for index, (image, found) in enumerate(zip(images, detections, strict=True))
        ]

    def _output(
        self, image: Image.Image, found: _Detections, embeddings: list[list[float]], opts: FacesOptions
    ) -> AnalyzerOutput:
        width, height = image.size
        faces = []
        for number, face in enumerate(found.faces):
            record: dict[str, Any] = {
                "box": [_norm(v, width if axis % 2 == 0 else height) for axis, v in enumerate(face.box)],
                "landmarks": [[_norm(x, width), _norm(y, height)] for x, y in face.landmarks],
                "probability": round(face.probability, SCORE_DIGITS),
                "size_px": round(face.size_px, 1),
            }
            if embeddings:
                record["embedding"] = embeddings[number]
            faces.append(record)
        payload = {
            "face_count": len(faces),
            "faces": faces,
            "image_width": width,
            "image_height": height,
            "detector_model": self.detector_id,
            "min_face_size": opts.min_face_size,
            "min_probability": opts.min_probability,
        }
        return AnalyzerOutput(model_id=self.model_id, tags=_tags(found), payload=payload)

    def aggregate(self, frames: Sequence[tuple[float | None, AnalyzerOutput]]) -> AnalyzerOutput:
        """One output per video: the tags of the frame with the most faces and ``face_count`` (the most in one frame).

        ``payload["frames"]`` lists each frame's timestamp, face count and size; ``payload["faces"]`` every face of
        every frame with its ``timestamp_s`` and ``frame`` index, embeddings included.
        """
        if not frames:
            raise ValueError("no frames to aggregate")

        def rank(output: AnalyzerOutput) -> tuple[int, float]:
            # Most faces first; among frames without any, the one that most doubts it (lowest faces/none score).
            count = int(output.payload["face_count"])
            score = output.tags[0].score if output.tags else 0.0
            return count, score if count else -score

        best_index = max(range(len(frames)), key=lambda i: rank(frames[i][1]))
        best_timestamp, best = frames[best_index]
        per_frame, faces = [], []
        for number, (timestamp, output) in enumerate(frames):
            payload = output.payload
            per_frame.append(
                {
                    "timestamp_s": timestamp,
                    "face_count": payload["face_count"],
                    "image_width": payload["image_width"],
                    "image_height": payload["image_height"],
                }
            )
            faces += [{"timestamp_s": timestamp, "frame": number, **face} for face in payload["faces"]]
        payload = {
            key: value for key, value in best.payload.items() if key not in {"faces", "image_width", "image_height"}
        }
        payload.update({"best_frame_timestamp_s": best_timestamp, "frames": per_frame, "faces": faces})
        return AnalyzerOutput(model_id=best.model_id, tags=list(best.tags), payload=payload)


def _select(boxes: Any, points: Any, opts: FacesOptions) -> _Detections:
    """Faces of one image from MTCNN's ``[n, 5]`` boxes (with probability) and ``[n, 5, 2]`` landmarks."""
    rows = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    marks = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
    best = float(rows[:, 4].max()) if len(rows) else 0.0
    faces = [
        DetectedFace(
            box=(float(row[0]), float(row[1]), float(row[2]), float(row[3])),
            landmarks=tuple((float(x), float(y)) for x, y in mark),
            probability=float(row[4]),
        )
        for row, mark in zip(rows, marks, strict=True)
    ]
    kept = [f for f in faces if f.probability >= opts.min_probability and f.size_px >= opts.min_face_size]
    kept.sort(key=lambda face: -face.area_px)
    return _Detections(kept, best)


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def face_pixels(image: Image.Image, box: Sequence[float]) -> np.ndarray:
    """The ``[160, 160, 3]`` uint8 embedder input for a face: the box, truncated to whole pixels and kept inside the
    image, resized bilinearly (facenet-pytorch's ``extract_face`` without margin, which its embedder expects)."""
    width, height = image.size
    left, top = int(max(box[0], 0)), int(max(box[1], 0))
    right, bottom = int(min(box[2], width)), int(min(box[3], height))
    face = image.crop((left, top, right, bottom)).resize((CROP_SIZE_PX, CROP_SIZE_PX), Image.Resampling.BILINEAR)
    return np.asarray(face, dtype=np.uint8)


def _norm(value: float, extent: int) -> float:
    return round(min(max(value / extent, 0.0), 1.0), SCORE_DIGITS)


def _tags(found: _Detections) -> list[TagScore]:
    """``faces/none`` scored by how sure no candidate is a face; otherwise the count, scored by its weakest face."""
    faces = found.faces
    if not faces:
        return [TagScore(tag="faces/none", score=round(1.0 - found.best_candidate, SCORE_DIGITS))]
    probabilities = sorted((face.probability for face in faces), reverse=True)
    # "one" holds as surely as its face; "several" as surely as the second most certain face.
    kind, kind_score = ("one", probabilities[0]) if len(faces) == 1 else ("several", probabilities[1])
    return [
        TagScore(tag=f"faces/{kind}", score=round(kind_score, SCORE_DIGITS)),
        TagScore(tag=f"faces/count/{len(faces)}", score=round(probabilities[-1], SCORE_DIGITS)),
    ]
