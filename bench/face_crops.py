"""The faces analyzer's embedder inputs: time on the model's thread to cut, resize and standardise the faces of a batch.

    python bench/face_crops.py                       # the faces MTCNN finds in the shared photos and video, best of 5
    python bench/face_crops.py --copies 8 --repeat 10

"one by one" is facenet-pytorch's ``extract_face`` and ``fixed_image_standardization`` for each face, one after
another, then a stack of float32 tensors, as the analyzer used to build its embedder input. "analyzer" is
``FacesAnalyzer._face_pixels`` (uint8 crops cut on the crop threads) and the standardisation the analyzer does, on
the CPU here, before its embedder. Both give the same tensor, which the script checks. The faces are those the real
MTCNN finds in the shared photos and frames, each photo's set repeated ``--copies`` times as one batch's faces.
Nothing is asserted: record the figures with the command, machine and date in docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from face_clustering import load_analyzer  # noqa: E402

from gpu_worker.decode import decode_image, decode_video_frames  # noqa: E402
from gpu_worker.models.faces import PIXEL_CENTRE, PIXEL_SCALE, import_facenet  # noqa: E402

SHARED_MEDIA = REPO.parent / "shared" / "media"


def best_ms(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - began) * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4, help="times each picture's faces recur in the batch")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not (SHARED_MEDIA / "bus.jpg").exists():
        sys.exit("../shared/media is absent: this benchmark needs its photos")

    analyzer = load_analyzer(Path(tempfile.mkdtemp(prefix="mam-bench-crops-")))
    limits = {"max_pixels": 100_000_000, "max_side_px": analyzer.store.settings.max_decode_side_px}
    pictures = [decode_image(SHARED_MEDIA / name, **limits) for name in ("bus.jpg", "zidane.jpg", "grace_hopper.jpg")]
    pictures += [f.image for f in decode_video_frames(SHARED_MEDIA / "talking_zidane_bus.mp4", count=4, **limits)]
    boxes = [(picture, face.box) for picture, faces in zip(pictures, analyzer.detect(pictures), strict=True)
             for face in faces] * args.copies  # fmt: skip
    facenet = import_facenet()

    def one_by_one() -> torch.Tensor:
        crops = [facenet.fixed_image_standardization(facenet.extract_face(p, b, 160)) for p, b in boxes]
        return torch.stack(crops)

    def analyzer_path() -> torch.Tensor:
        pixels = torch.from_numpy(np.stack(analyzer._face_pixels(boxes)))
        return (pixels.permute(0, 3, 1, 2).contiguous().float() - PIXEL_CENTRE) / PIXEL_SCALE

    if not torch.equal(one_by_one(), analyzer_path()):
        raise RuntimeError("the two ways of cutting faces disagree")
    old, new = best_ms(one_by_one, args.repeat), best_ms(analyzer_path, args.repeat)
    print(f"{len(boxes)} faces from {len(pictures)} pictures, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"one by one: {old:7.2f} ms per batch, {old / len(boxes):.3f} ms per face")
    print(f"analyzer:   {new:7.2f} ms per batch, {new / len(boxes):.3f} ms per face  ({old / new:.2f}x)")


if __name__ == "__main__":
    main()
