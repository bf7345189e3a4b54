"""Image decoding on the CPU: milliseconds per image of the worker's own ``decode_image`` at the configured decode size
against 1024 px, for the JPEG sizes people upload, and the CPU cores that decoding alone takes at a GPU's pace.

    python bench/decode.py                        # 8 generated JPEGs per size, best of 3
    python bench/decode.py --images 16 --repeat 5 --gpu-img-s 2000 --json decode.json

It also decodes the 1080p corpus on 1 and on ``--threads`` threads (default: one per core), as the worker's decode
pool does: Pillow releases the GIL while it decodes and resamples, so images/s should grow with the threads.

A GPU worker decodes on its CPU threads while the GPU runs the models, so at the issue's 2,000 images/s the decode
cost per image decides how many cores feed one GPU. Corpora: textured JPEGs generated at 1920x1080, 3840x2160 and
4032x3024 (``gpu_worker.benchmark.generate_corpus``), and the shared photos. Nothing is asserted: record the figures
with the command, machine and date in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from worker_throughput import shared_corpus  # noqa: E402

from gpu_worker.benchmark import generate_corpus  # noqa: E402
from gpu_worker.decode import decode_image  # noqa: E402
from gpu_worker.settings import WorkerSettings  # noqa: E402

SIZES = ((1920, 1080), (3840, 2160), (4032, 3024))
COMPARED_SIDE_PX = 1024


def ms_per_image(paths: list[Path], side: int, repeat: int) -> tuple[float, tuple[int, int]]:
    """Best of ``repeat`` mean decode times (ms per image) at ``side``, and the decoded size of the first image."""
    max_pixels = WorkerSettings().max_image_pixels
    best = float("inf")
    size = (0, 0)
    for _ in range(repeat):
        began = time.perf_counter()
        for path in paths:
            image = decode_image(path, max_pixels=max_pixels, max_side_px=side)
            size = size if size != (0, 0) else image.size
        best = min(best, (time.perf_counter() - began) / len(paths) * 1000)
    return best, size


def images_per_s(paths: list[Path], side: int, threads: int, repeat: int) -> float:
    """Best of ``repeat`` decode rates of ``paths`` (each decoded 4 times) on a pool of ``threads`` threads."""
    max_pixels = WorkerSettings().max_image_pixels
    work = paths * 4
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeat):
            began = time.perf_counter()
            list(pool.map(lambda path: decode_image(path, max_pixels=max_pixels, max_side_px=side), work))
            best = max(best, len(work) / (time.perf_counter() - began))
    return best


def main() -> None:
    """Measure each corpus at the configured decode size and at 1024 px; print and optionally write the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="images per corpus")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per figure (the best is kept)")
    parser.add_argument("--gpu-img-s", type=float, default=2000.0, help="the GPU pace decoding has to keep up with")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="decode threads for the scaling run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    configured = WorkerSettings().max_decode_side_px
    work = Path(tempfile.mkdtemp(prefix="mam-bench-decode-"))
    corpora = {f"{w}x{h} JPEG": generate_corpus(work / f"{w}x{h}", args.images, w, h) for w, h in SIZES}
    photos = shared_corpus(work / "shared", args.images)
    if photos:
        corpora["shared photos"] = photos

    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; python {platform.python_version()}")
    print(f"decode size {configured} px (configured) against {COMPARED_SIDE_PX} px; best of {args.repeat}\n")
    header = f"{'corpus':16s} {'decoded to':>11s} {'ms/img':>8s} {'at 1024':>11s} {'ms/img':>8s} {'gain':>6s}"
    print(header + f" {'cores at ' + format(args.gpu_img_s, '.0f') + ' img/s':>20s}")
    rows: list[dict[str, Any]] = []
    for name, paths in corpora.items():
        ms, size = ms_per_image(paths, configured, args.repeat)
        ms_ref, size_ref = ms_per_image(paths, COMPARED_SIDE_PX, args.repeat)
        cores = args.gpu_img_s * ms / 1000
        print(
            f"{name:16s} {size[0]:>5d}x{size[1]:<5d} {ms:8.1f} {size_ref[0]:>5d}x{size_ref[1]:<5d} {ms_ref:8.1f} "
            f"{ms_ref / ms:5.1f}x {cores:20.1f}"
        )
        rows.append(
            {
                "corpus": name,
                "decode_side_px": configured,
                "decoded_size": list(size),
                "ms_per_image": ms,
                "ms_per_image_at_1024": ms_ref,
                "decoded_size_at_1024": list(size_ref),
                "cores_at_gpu_pace": cores,
            }
        )
    mean_gain = statistics.fmean(r["ms_per_image_at_1024"] / r["ms_per_image"] for r in rows)
    print(f"\nmean gain over 1024 px: {mean_gain:.2f}x")
    first = next(iter(corpora))
    one = images_per_s(corpora[first], configured, 1, args.repeat)
    many = images_per_s(corpora[first], configured, args.threads, args.repeat)
    print(
        f"{first} on threads: 1 thread {one:.1f} img/s, {args.threads} threads {many:.1f} img/s "
        f"({many / one:.2f}x on {os.cpu_count()} cores)"
    )
    if args.json:
        scaling = {"corpus": first, "threads": args.threads, "img_s_1_thread": one, "img_s_threads": many}
        args.json.write_text(json.dumps({"gpu_img_s": args.gpu_img_s, "rows": rows, "threads": scaling}, indent=2))


if __name__ == "__main__":
    main()
