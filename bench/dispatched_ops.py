"""Tensor operations each analyzer's ``run`` dispatches per image, one image at a time and in batches: on a GPU every
one is a kernel launch with a fixed cost on the model's thread, so this count bounds the images/s one GPU can reach
in eager mode however fast its arithmetic is.

    python bench/dispatched_ops.py                         # CPU, 8 frames of the shared video, batches of 1 and 8
    python bench/dispatched_ops.py --images 32 --batch 32 --json ops.json

The inputs are prepared first (as the decode threads prepare them), so only what runs on the model's thread counts.
Faces detect equal-size pictures in batches as they do on CUDA (``DETECT_BATCH_IMAGES``), on any device, so that the
count is the one a GPU would see.
The count is every ATen operation PyTorch dispatches (``gpu_worker.benchmark.DispatchedOps``), taken on any device;
operations run by onnxruntime (open_nsfw) are not PyTorch's and are not counted. The script also times PyTorch's own
cost of dispatching one small operation on this machine's CPU, and prints the images/s at which dispatching alone
would keep the model's thread busy (1 / (operations per image x that cost)). The launch itself on a GPU adds to
that cost, so the real bound is lower. Nothing is asserted: record the figures in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from worker_throughput import start_executor  # noqa: E402

from gpu_worker.benchmark import DispatchedOps, generate_corpus  # noqa: E402
from gpu_worker.decode import decode_image, decode_video_frames  # noqa: E402

ANALYZERS = ("clip", "objects", "faces")
VIDEO = REPO.parent / "shared" / "media" / "talking_zidane_bus.mp4"
SMALL_OP_CALLS = 20_000


def small_op_cost_us() -> float:
    """Microseconds PyTorch takes on this CPU to dispatch and run one operation on a one-element tensor (best of 3)."""
    import torch

    value = torch.zeros(1)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(3):
            began = time.perf_counter()
            for _ in range(SMALL_OP_CALLS):
                value.add_(1)
            best = min(best, (time.perf_counter() - began) / SMALL_OP_CALLS * 1e6)
    return best


def ops_per_image(analyzer: Any, images: list[Any], batch: int) -> float:
    """Operations ``analyzer.run`` dispatches per image, with its inputs prepared ahead, in batches of ``batch``."""
    prepared = {id(image): analyzer.prepare(image) for image in images}
    analyzer.run(images[:batch], {})  # warm-up: lazy initialisation is not per-image work
    with analyzer.prepared_inputs(prepared), DispatchedOps() as counter:
        for start in range(0, len(images), batch):
            analyzer.run(images[start : start + batch], {})
    return float(counter.count) / len(images)


def corpus(work: Path, count: int, settings: Any) -> tuple[str, list[Any]]:
    """The shared video's frames (people and faces, all one size), else generated 1080p JPEGs."""
    limits = {"max_pixels": settings.max_image_pixels, "max_side_px": settings.max_decode_side_px}
    if VIDEO.exists():
        frames = decode_video_frames(VIDEO, count=count, **limits)
        return f"{len(frames)} frames of the shared video", [frame.image for frame in frames]
    paths = generate_corpus(work, count)
    return f"{count} generated 1080p JPEGs", [decode_image(path, **limits) for path in paths]


def main() -> None:
    """Count each analyzer's operations and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="images per run in the batched column")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mam-bench")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    executor, machine = start_executor(args.work, args.device, None)
    import gpu_worker.models.faces as faces_module

    on_cuda = faces_module.DETECT_BATCH_IMAGES["cuda"]
    faces_module.DETECT_BATCH_IMAGES = {"cpu": on_cuda, "cuda": on_cuda}
    label, images = corpus(Path(tempfile.mkdtemp(prefix="mam-bench-ops-")), args.images, executor.settings)
    cost_us = small_op_cost_us()
    print(f"machine: {machine}; {label} at {images[0].size}")
    print(f"one small PyTorch operation on this CPU: {cost_us:.2f} us; faces detect {on_cuda} pictures per pass")
    print(f"{'analyzer':10s} {'ops/img, 1 at a time':>21s} {f'ops/img, {args.batch} at a time':>22s} {'bound':>14s}")
    rows = {}
    for name in ANALYZERS:
        analyzer = executor.analyzer(name)
        single, batched = ops_per_image(analyzer, images, 1), ops_per_image(analyzer, images, args.batch)
        rows[name] = {"single": single, "batched": batched}
        bound = 1e6 / (batched * cost_us)
        print(f"{name:10s} {single:21.0f} {batched:22.0f} {bound:9.0f} img/s")
    together = sum(row["batched"] for row in rows.values())
    print(f"{'together':10s} {sum(r['single'] for r in rows.values()):21.0f} {together:22.0f} "
          f"{1e6 / (together * cost_us):9.0f} img/s")  # fmt: skip
    if args.json:
        figures = {"machine": machine, "corpus": label, "small_op_us": cost_us, "batch": args.batch, "rows": rows}
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
