"""MTCNN's three-stage face detection for a batch of equal-size images, with the refine stages' crops vectorised.

The algorithm and its arithmetic are those of facenet-pytorch's ``detect_face``, whose published weights the faces
analyzer loads: an image pyramid through P-net, per-scale and per-image NMS, then R-net and O-net on square crops of
the surviving candidates, box regression and landmarks. What differs is how the R- and O-net inputs are made. The
reference cuts every candidate out of the image and resamples it on its own, two tensor operations per candidate in
a Python loop (hundreds of candidates per photo, each a kernel launch on a GPU). Here every candidate's crop is
resampled at once from a summed-area table: "area" resampling is the mean of the source pixels under each output
cell, and each such mean is four lookups in the table. Candidates stay on the analyzer's device until the final,
small NMS.

One deliberate difference: a candidate whose clipped box lies wholly outside the image is dropped. The reference
skips its crop but keeps its box, which puts later scores against the wrong boxes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from gpu_worker.torch_compat import ensure_torchvision_ops

# P-net looks at 12x12 windows with a stride of 2 px in each pyramid level.
PNET_WINDOW_PX = 12
PNET_STRIDE_PX = 2
RNET_INPUT_PX = 24
ONET_INPUT_PX = 48
# Pixel values 0-255 become (v - 127.5) / 128 before every net.
PIXEL_CENTRE = 127.5
PIXEL_SCALE = 0.0078125
# IoU above which NMS drops a candidate: within a pyramid level, within an image, and O-net's "Min" overlap.
LEVEL_NMS_IOU = 0.5
IMAGE_NMS_IOU = 0.7
FINAL_NMS_OVERLAP = 0.7
# Candidates per refine-net call, which bounds the activations' memory on a GPU.
REFINE_CHUNK = 512
# Largest summed pixel value an int32 summed-area table holds: 255 per channel value.
INT32_TABLE_PIXELS = (2**31 - 1) // 255


class NetTriple(Protocol):
    """P-, R- and O-net, as the faces analyzer loads them (or facenet-pytorch's ``MTCNN`` holds them)."""

    @property
    def pnet(self) -> torch.nn.Module: ...

    @property
    def rnet(self) -> torch.nn.Module: ...

    @property
    def onet(self) -> torch.nn.Module: ...


@dataclass(frozen=True)
class ImageFaces:
    """What the detector found in one image: ``boxes`` [n, 5] (x1, y1, x2, y2, probability) and ``points`` [n, 5, 2].

    Pixel coordinates of the analyzed image; rows in descending probability.
    """

    boxes: np.ndarray
    points: np.ndarray


@dataclass
class _Candidates:
    """Candidate boxes of the whole batch: ``boxes`` [n, 4] (x1, y1, x2, y2), ``scores`` [n], ``image`` [n]."""

    boxes: torch.Tensor
    scores: torch.Tensor
    image: torch.Tensor

    def take(self, keep: torch.Tensor) -> _Candidates:
        return _Candidates(self.boxes[keep], self.scores[keep], self.image[keep])


def pyramid_scales(height: int, width: int, min_face_size: int, factor: float) -> list[float]:
    """The image scales P-net runs at: a face of ``min_face_size`` px fills its 12 px window at the first one."""
    scale = PNET_WINDOW_PX / min_face_size
    shorter = min(height, width) * scale
    scales = []
    while shorter >= PNET_WINDOW_PX:
        scales.append(scale)
        scale *= factor
        shorter *= factor
    return scales


def detect_faces(
    images: Sequence[Image.Image],
    nets: NetTriple,
    *,
    min_face_size: int,
    thresholds: Sequence[float],
    factor: float,
    device: torch.device,
) -> list[ImageFaces]:
    """Faces in each of ``images`` (RGB, all the same size): boxes with probability and five landmarks each.

    ``thresholds`` are the P-, R- and O-net score thresholds; ``factor`` the pyramid's scale step.
    """
    if len({image.size for image in images}) > 1:
        raise ValueError("MTCNN detects on a batch of images of one size only")
    if not images:
        return []
    pixels = torch.as_tensor(np.stack([np.asarray(image, dtype=np.uint8) for image in images]), device=device)
    pixels = pixels.permute(0, 3, 1, 2)
    dtype = next(nets.pnet.parameters()).dtype
    height, width = pixels.shape[2:]
    with torch.inference_mode():
        candidates = _propose(pixels.to(dtype), nets.pnet, min_face_size, thresholds[0], factor)
        if not len(candidates.boxes):
            nothing = ImageFaces(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))
            return [nothing for _ in images]
        table = summed_area_table(pixels)
        candidates = _refine(table, candidates, nets.rnet, thresholds[1], (width, height))
        boxes, points = _finish(table, candidates, nets.onet, thresholds[2], (width, height))
    return _per_image(boxes, points, len(images))


def _propose(
    pixels: torch.Tensor, pnet: torch.nn.Module, min_face_size: int, threshold: float, factor: float
) -> _Candidates:
    """Stage 1: P-net over the pyramid, NMS within each level and image, then regressed and squared."""
    nms = _batched_nms()
    height, width = pixels.shape[2:]
    levels = []
    scales = pyramid_scales(height, width, min_face_size, factor)
    if not scales:
        empty = pixels.new_zeros(0, 4)
        return _Candidates(empty, empty[:, 0], torch.zeros(0, dtype=torch.long, device=pixels.device))
    for scale in scales:
        size = (int(height * scale + 1), int(width * scale + 1))
        level = torch.nn.functional.interpolate(pixels, size=size, mode="area")
        offsets, probabilities = pnet((level - PIXEL_CENTRE) * PIXEL_SCALE)
        found, regression = _windows(offsets, probabilities[:, 1], scale, threshold)
        keep = nms(found.boxes, found.scores, found.image, LEVEL_NMS_IOU)
        levels.append((found.take(keep), regression[keep]))
    candidates = _Candidates(*(torch.cat([getattr(c, f) for c, _ in levels]) for f in ("boxes", "scores", "image")))
    regression = torch.cat([r for _, r in levels])
    keep = nms(candidates.boxes, candidates.scores, candidates.image, IMAGE_NMS_IOU)
    candidates, regression = candidates.take(keep), regression[keep]
    # P-net's regression is relative to the box's extent without the +1 the later stages use.
    extent = (candidates.boxes[:, 2:] - candidates.boxes[:, :2]).repeat(1, 2)
    candidates.boxes = _squared(candidates.boxes + regression * extent)
    return candidates


def _windows(
    offsets: torch.Tensor, probabilities: torch.Tensor, scale: float, threshold: float
) -> tuple[_Candidates, torch.Tensor]:
    """P-net windows scoring at least ``threshold``, as boxes in image pixels, with their four regression offsets."""
    image, row, column = (probabilities >= threshold).nonzero(as_tuple=True)
    scores = probabilities[image, row, column]
    regression = offsets[image, :, row, column]
    corner = torch.stack([column, row], dim=1).to(offsets.dtype) * PNET_STRIDE_PX
    top_left = ((corner + 1) / scale).floor()
    bottom_right = ((corner + PNET_WINDOW_PX) / scale).floor()
    return _Candidates(torch.cat([top_left, bottom_right], dim=1), scores, image), regression


def _refine(
    table: torch.Tensor,
    candidates: _Candidates,
    rnet: torch.nn.Module,
    threshold: float,
    image_size: tuple[int, int],
) -> _Candidates:
    """Stage 2: R-net on 24 px crops; the candidates it scores above ``threshold``, NMS'd, regressed and squared."""
    candidates, crops = _crops(table, candidates, RNET_INPUT_PX, image_size)
    regression, probabilities = _chunked(rnet, crops)
    candidates.scores = probabilities[:, 1]
    passed = candidates.scores > threshold
    candidates, regression = candidates.take(passed), regression[passed]
    keep = _batched_nms()(candidates.boxes, candidates.scores, candidates.image, IMAGE_NMS_IOU)
    candidates, regression = candidates.take(keep), regression[keep]
    candidates.boxes = _squared(_regressed(candidates.boxes, regression))
    return candidates


def _finish(
    table: torch.Tensor,
    candidates: _Candidates,
    onet: torch.nn.Module,
    threshold: float,
    image_size: tuple[int, int],
) -> tuple[_Candidates, torch.Tensor]:
    """Stage 3: O-net on 48 px crops: final boxes and landmarks, then NMS by overlap of the smaller box."""
    candidates, crops = _crops(table, candidates, ONET_INPUT_PX, image_size)
    regression, landmarks, probabilities = _chunked(onet, crops)
    candidates.scores = probabilities[:, 1]
    passed = candidates.scores > threshold
    candidates, regression, landmarks = candidates.take(passed), regression[passed], landmarks[passed]
    extent = candidates.boxes[:, 2:] - candidates.boxes[:, :2] + 1
    # Landmarks come as five x then five y, relative to the box.
    xs = extent[:, :1] * landmarks[:, :5] + candidates.boxes[:, :1] - 1
    ys = extent[:, 1:] * landmarks[:, 5:] + candidates.boxes[:, 1:2] - 1
    points = torch.stack([xs, ys], dim=2)
    candidates.boxes = _regressed(candidates.boxes, regression)
    keep = _min_overlap_nms(candidates, FINAL_NMS_OVERLAP)
    return candidates.take(keep), points[keep]


def summed_area_table(pixels: torch.Tensor) -> torch.Tensor:
    """[b, c, h + 1, w + 1] integer sums of ``pixels`` (uint8 [b, c, h, w]) above and left of each position."""
    batch, channels, height, width = pixels.shape
    dtype = torch.int32 if height * width <= INT32_TABLE_PIXELS else torch.int64
    table = torch.zeros(batch, channels, height + 1, width + 1, dtype=dtype, device=pixels.device)
    # Cast into the table's interior, then cumulative sums in place: a third of the time of two cumsums and a pad on
    # the CPU.
    table[:, :, 1:, 1:] = pixels
    return table.cumsum_(dim=3).cumsum_(dim=2)


def area_resized_crops(
    table: torch.Tensor, image: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, size: int
) -> torch.Tensor:
    """Crops resampled to ``size`` x ``size`` by area averaging, as ``interpolate(..., mode="area")`` does.

    ``table`` is a :func:`summed_area_table`; ``image`` [n] picks each crop's image; ``rows`` and ``columns`` [n, 2]
    are each crop's half-open pixel ranges [start, end), non-empty and inside the image. Returns float32
    [n, c, size, size].
    """
    cells = torch.arange(size, device=table.device)

    def cell_edges(ranges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Adaptive average pooling's cells: [floor(i * n / size), ceil((i + 1) * n / size)) of a range n long.
        start, length = ranges[:, :1], ranges[:, 1:] - ranges[:, :1]
        return start + cells * length // size, start + ((cells + 1) * length + size - 1) // size

    top, bottom = cell_edges(rows.long())
    left, right = cell_edges(columns.long())
    channels, table_height, table_width = table.shape[1:]
    plane = (image.long()[:, None] * channels + torch.arange(channels, device=table.device)) * table_height
    flat = table.reshape(-1)

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        index = ((plane[:, :, None] + y[:, None, :]) * table_width)[:, :, :, None] + x[:, None, None, :]
        return flat[index]

    sums = at(bottom, right) - at(top, right) - at(bottom, left) + at(top, left)
    heights = (bottom - top).to(torch.float32)[:, None, :, None]
    widths = (right - left).to(torch.float32)[:, None, None, :]
    return sums.to(torch.float32) / heights / widths


def _crops(
    table: torch.Tensor, candidates: _Candidates, size: int, image_size: tuple[int, int]
) -> tuple[_Candidates, torch.Tensor]:
    """The candidates' boxes clipped to the image, resampled to ``size`` px and normalised for the next net.

    Candidates whose clipped box is empty are dropped.
    """
    width, height = image_size
    corners = candidates.boxes.trunc().to(torch.int64)
    # Boxes are 1-based and inclusive of their far edge: [x1 - 1, x2) in 0-based pixels, clipped to the image.
    left = corners[:, 0].clamp(min=1) - 1
    top = corners[:, 1].clamp(min=1) - 1
    right = corners[:, 2].clamp(max=width)
    bottom = corners[:, 3].clamp(max=height)
    inside = (right > left) & (bottom > top)
    if not bool(inside.all()):
        candidates = candidates.take(inside)
        left, top, right, bottom = left[inside], top[inside], right[inside], bottom[inside]
    crops = area_resized_crops(
        table, candidates.image, torch.stack([top, bottom], dim=1), torch.stack([left, right], dim=1), size
    )
    return candidates, (crops - PIXEL_CENTRE) * PIXEL_SCALE


def _chunked(net: torch.nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``net``'s outputs for all ``crops``, run ``REFINE_CHUNK`` at a time."""
    dtype = next(net.parameters()).dtype
    if len(crops) == 0:
        return tuple(part[:0] for part in net(crops.new_zeros(1, *crops.shape[1:], dtype=dtype)))
    outputs = [net(crops[start : start + REFINE_CHUNK].to(dtype)) for start in range(0, len(crops), REFINE_CHUNK)]
    return tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))


def _regressed(boxes: torch.Tensor, regression: torch.Tensor) -> torch.Tensor:
    """Boxes moved by R- or O-net's offsets, relative to the box's inclusive extent."""
    extent = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(1, 2)
    return boxes + regression * extent


def _squared(boxes: torch.Tensor) -> torch.Tensor:
    """Each box grown to a square of its longer side, about the same centre."""
    extent = boxes[:, 2:] - boxes[:, :2]
    side = extent.max(dim=1, keepdim=True).values
    top_left = boxes[:, :2] + extent * 0.5 - side * 0.5
    return torch.cat([top_left, top_left + side], dim=1)


def _min_overlap_nms(candidates: _Candidates, threshold: float) -> torch.Tensor:
    """Greedy NMS per image, highest score first, by intersection over the smaller box's area (inclusive pixels).

    The indices kept, in descending score. Runs on the CPU: after O-net there are a few candidates per image.
    """
    boxes = candidates.boxes.cpu().numpy()
    scores = candidates.scores.cpu().numpy()
    images = candidates.image.cpu().numpy()
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    kept: list[int] = []
    # Ascending by score, taken from the end, as the reference does (its order decides between equal scores).
    order = np.argsort(scores)
    while order.size:
        best, rest = order[-1], order[:-1]
        kept.append(int(best))
        top_left = np.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = np.minimum(boxes[best, 2:4], boxes[rest, 2:4])
        sides = np.maximum(0.0, bottom_right - top_left + 1)
        overlap = sides[:, 0] * sides[:, 1] / np.minimum(areas[best], areas[rest])
        # Boxes of other images never suppress each other.
        order = rest[(overlap <= threshold) | (images[rest] != images[best])]
    return torch.as_tensor(kept, dtype=torch.long, device=candidates.boxes.device)


def _per_image(candidates: _Candidates, points: torch.Tensor, count: int) -> list[ImageFaces]:
    rows = torch.cat([candidates.boxes, candidates.scores[:, None]], dim=1).float().cpu().numpy()
    marks = points.float().cpu().numpy()
    images = candidates.image.cpu().numpy()
    return [ImageFaces(rows[images == index], marks[images == index]) for index in range(count)]


def _batched_nms() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """torchvision's ``batched_nms`` (compiled, or the pure-PyTorch kernel where the compiled ops do not load)."""
    ensure_torchvision_ops()
    from torchvision.ops import batched_nms

    return batched_nms  # type: ignore[no-any-return]
