"""MTCNN face detection: facenet-pytorch's ``detect_face`` against the worker's ``gpu_worker.models.mtcnn``.

    python bench/mtcnn.py                                  # CPU, shared photos and video frames, best of 3
    python bench/mtcnn.py --device cuda --batch 16 --repeat 5 --json mtcnn.json

Both run the real MTCNN weights that ship in the facenet-pytorch wheel on the same decoded pictures (the worker's
``decode_image`` / ``decode_video_frames`` at the configured decode size): the shared photos one at a time, and the
shared video's frames (all one size) one at a time and in batches of ``--batch``. For each it prints:

- milliseconds per image, best of ``--repeat`` (on CUDA synchronised before the clock stops);
- tensor operations dispatched per image (every ATen call, each a kernel launch on a GPU; counted on a separate pass):
  the reference cuts and resamples every R- and O-net candidate in its own Python-loop iteration, which on a GPU
  costs launches, not arithmetic;
- P-net candidates per image that reach R-net;
- the largest difference between the two detectors' boxes, probabilities and landmarks (px), which should be 0.

Nothing is asserted: record the figures with the command, machine and date in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpu_worker.benchmark import DispatchedOps, generate_corpus  # noqa: E402
from gpu_worker.decode import decode_image, decode_video_frames  # noqa: E402
from gpu_worker.models import mtcnn  # noqa: E402
from gpu_worker.models.faces import PYRAMID_FACTOR, FacesOptions, import_facenet  # noqa: E402
from gpu_worker.settings import WorkerSettings  # noqa: E402

SHARED_MEDIA = REPO.parent / "shared" / "media"
PHOTOS = ("bus.jpg", "zidane.jpg", "grace_hopper.jpg")
VIDEO = "talking_zidane_bus.mp4"

Detector = Callable[[Sequence[Image.Image]], list[tuple[np.ndarray, np.ndarray]]]


@dataclass
class Row:
    """One corpus and batch size, both detectors."""

    corpus: str
    images: int
    batch: int
    reference_ms: float
    vectorised_ms: float
    reference_ops: float
    vectorised_ops: float
    candidates: float
    faces: int
    max_difference: float


def detectors(device: torch.device) -> tuple[Detector, Detector, Callable[[], int]]:
    """The reference and the vectorised detector on the wheel's MTCNN, and a reader of the last candidate count."""
    facenet = import_facenet()
    nets = facenet.MTCNN(device=device)
    options = FacesOptions()
    seen = [0]
    pad = facenet.models.utils.detect_face.pad

    def counting_pad(boxes: torch.Tensor, w: int, h: int) -> Any:
        if not seen[0]:
            seen[0] = len(boxes)
        return pad(boxes, w, h)

    facenet.models.utils.detect_face.pad = counting_pad

    def reference(images: Sequence[Image.Image]) -> list[tuple[np.ndarray, np.ndarray]]:
        seen[0] = 0
        with torch.inference_mode():
            boxes, points = facenet.models.utils.detect_face.detect_face(
                list(images), options.min_face_size, nets.pnet, nets.rnet, nets.onet,
                list(options.thresholds), PYRAMID_FACTOR, device,
            )  # fmt: skip
        return [(np.asarray(b, np.float32).reshape(-1, 5), np.asarray(p, np.float32).reshape(-1, 5, 2))
                for b, p in zip(boxes, points, strict=True)]  # fmt: skip

    def vectorised(images: Sequence[Image.Image]) -> list[tuple[np.ndarray, np.ndarray]]:
        found = mtcnn.detect_faces(
            images, nets, min_face_size=options.min_face_size, thresholds=options.thresholds,
            factor=PYRAMID_FACTOR, device=device,
        )  # fmt: skip
        return [(faces.boxes, faces.points) for faces in found]

    return reference, vectorised, lambda: seen[0]


def timed_ms(detect: Detector, images: Sequence[Image.Image], batch: int, repeat: int, device: torch.device) -> float:
    """Best of ``repeat`` passes over ``images`` in batches of ``batch``: milliseconds per image."""
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        for start in range(0, len(images), batch):
            detect(images[start : start + batch])
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - began) / len(images) * 1000)
    return best


def ops_per_image(detect: Detector, images: Sequence[Image.Image], batch: int) -> float:
    with DispatchedOps() as counter:
        for start in range(0, len(images), batch):
            detect(images[start : start + batch])
    return float(counter.count) / len(images)


def difference(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Largest absolute difference of boxes, probabilities and landmarks; infinity when the face counts differ."""
    worst = 0.0
    for (boxes_a, points_a), (boxes_b, points_b) in zip(a, b, strict=True):
        if boxes_a.shape != boxes_b.shape:
            return float("inf")
        if len(boxes_a):
            worst = max(worst, float(np.abs(boxes_a - boxes_b).max()), float(np.abs(points_a - points_b).max()))
    return worst


def measure(
    corpus: str, images: list[Image.Image], batch: int, repeat: int, device: torch.device,
    parts: tuple[Detector, Detector, Callable[[], int]],
) -> Row:  # fmt: skip
    reference, vectorised, candidates = parts
    counts, expected, found = [], [], []
    for start in range(0, len(images), batch):
        expected += reference(images[start : start + batch])
        counts.append(candidates())
        found += vectorised(images[start : start + batch])
    return Row(
        corpus=corpus,
        images=len(images),
        batch=batch,
        reference_ms=timed_ms(reference, images, batch, repeat, device),
        vectorised_ms=timed_ms(vectorised, images, batch, repeat, device),
        reference_ops=ops_per_image(reference, images, batch),
        vectorised_ops=ops_per_image(vectorised, images, batch),
        candidates=sum(counts) / len(images),
        faces=sum(len(boxes) for boxes, _ in found),
        max_difference=difference(expected, found),
    )


def corpora(frames: int, generated: int, work: Path) -> dict[str, list[Image.Image]]:
    settings = WorkerSettings()
    side, pixels = settings.max_decode_side_px, settings.max_image_pixels
    found: dict[str, list[Image.Image]] = {}
    photos = [SHARED_MEDIA / name for name in PHOTOS if (SHARED_MEDIA / name).exists()]
    if photos:
        found["shared photos"] = [decode_image(p, max_pixels=pixels, max_side_px=side) for p in photos]
    if (SHARED_MEDIA / VIDEO).exists():
        decoded = decode_video_frames(SHARED_MEDIA / VIDEO, count=frames, max_pixels=pixels, max_side_px=side)
        found["shared video frames"] = [frame.image for frame in decoded]
    if generated:
        paths = generate_corpus(work, generated)
        found["generated 1080p"] = [decode_image(p, max_pixels=pixels, max_side_px=side) for p in paths]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="video frames per detector call in the batched row")
    parser.add_argument("--frames", type=int, default=16, help="frames taken from the shared video")
    parser.add_argument("--generated", type=int, default=8, help="generated 1080p JPEGs (no faces)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    parts = detectors(device)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for corpus, images in corpora(args.frames, args.generated, Path(work)).items():
            batches = [1] if corpus == "shared photos" else [1, args.batch]
            for batch in batches:
                rows.append(measure(corpus, images, batch, args.repeat, device, parts))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"MTCNN on {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'corpus':<22}{'batch':>6}{'reference ms':>14}{'vectorised ms':>15}{'speed-up':>10}"
          f"{'ref ops':>9}{'vec ops':>9}{'cands':>7}{'faces':>7}{'max diff':>10}")  # fmt: skip
    for row in rows:
        print(f"{row.corpus:<22}{row.batch:>6}{row.reference_ms:>14.1f}{row.vectorised_ms:>15.1f}"
              f"{row.reference_ms / row.vectorised_ms:>9.2f}x{row.reference_ops:>9.0f}{row.vectorised_ops:>9.0f}"
              f"{row.candidates:>7.0f}{row.faces:>7}{row.max_difference:>10.2g}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "name": name, "rows": [asdict(r) for r in rows]}))


if __name__ == "__main__":
    main()
