"""What the model's thread is spared when the analyzers' inputs are prepared on the decode threads: per analyzer, the
time of ``prepare`` (resize, normalise, letterbox; now on the decode threads) and of ``run`` with and without the
prepared inputs, on generated 1080p JPEGs decoded as the worker decodes them. The last row, ``clip+clf``, is CLIP in
a batch without the nsfw analyzer, where CLIP runs its own NSFW classifier: its "run" prepares the classifier's input
on the model's thread, and "run, prepared" takes it from the decode threads, as the executor does.

    python bench/prepared_inputs.py                      # CPU, 16 images, best of 3
    python bench/prepared_inputs.py --device cuda --images 256 --json prepared.json

On a GPU the forward passes shrink by one to two orders of magnitude while this CPU work does not, so what stays on
the model's thread bounds the images/s one GPU can reach; the last column is the bound that the preparation alone
set while it ran on the model's thread (1000 / its ms per image). Nothing is asserted; the outputs with and
without prepared inputs are compared and must be equal. Record the figures in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from worker_throughput import start_executor  # noqa: E402

from gpu_worker.benchmark import generate_corpus  # noqa: E402
from gpu_worker.decode import decode_image  # noqa: E402

ANALYZERS = ("clip", "nsfw", "objects")


def best_ms_per_image(fn: Callable[[], Any], images: int, repeat: int) -> float:
    """Best of ``repeat`` runs of ``fn``, in ms per image."""
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best / images * 1000


def measure(analyzer: Any, images: list[Any], repeat: int) -> dict[str, float]:
    """prepare, run without and run with prepared inputs, in ms per image; raises if the outputs differ."""
    analyzer.run(images[:2], {})  # warm-up: kernels, memory pools
    prepare_ms = best_ms_per_image(lambda: [analyzer.prepare(image) for image in images], len(images), repeat)
    prepared = {id(image): analyzer.prepare(image) for image in images}
    plain = analyzer.run(images, {})
    with analyzer.prepared_inputs(prepared):
        ahead = analyzer.run(images, {})
        run_prepared_ms = best_ms_per_image(lambda: analyzer.run(images, {}), len(images), repeat)
    if ahead != plain:
        raise RuntimeError(f"{analyzer.name}: outputs differ with prepared inputs")
    run_ms = best_ms_per_image(lambda: analyzer.run(images, {}), len(images), repeat)
    return {"prepare_ms": prepare_ms, "run_ms": run_ms, "run_prepared_ms": run_prepared_ms}


def measure_clip_with_classifier(clip: Any, images: list[Any], repeat: int) -> dict[str, float]:
    """CLIP run without the nsfw analyzer, as for a batch of clip alone: its own classifier's JPEG round trip is now
    prepared on the decode threads too. ms per image; raises if the outputs differ."""
    classifier = clip.nsfw_classifier
    both = lambda image: (clip.prepare(image), classifier.prepare(image))  # noqa: E731
    prepare_ms = best_ms_per_image(lambda: [both(image) for image in images], len(images), repeat)
    ready = {id(image): both(image) for image in images}
    clip_ready = {key: value[0] for key, value in ready.items()}
    classifier_ready = {key: value[1] for key, value in ready.items()}
    with clip.prepared_inputs(clip_ready):
        plain = clip.run(images, {})
        with classifier.prepared_inputs(classifier_ready):
            ahead = clip.run(images, {})
            run_prepared_ms = best_ms_per_image(lambda: clip.run(images, {}), len(images), repeat)
    if ahead != plain:
        raise RuntimeError("clip: outputs differ with the classifier's inputs prepared")
    run_ms = best_ms_per_image(lambda: clip.run(images, {}), len(images), repeat)
    return {"prepare_ms": prepare_ms, "run_ms": run_ms, "run_prepared_ms": run_prepared_ms}


def main() -> None:
    """Measure each analyzer and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="generated 1080p JPEGs")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure (the best is kept)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mam-bench")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    executor, machine = start_executor(args.work, args.device, None)
    settings = executor.settings
    paths = generate_corpus(Path(tempfile.mkdtemp(prefix="mam-bench-prepared-")), args.images)
    images = [
        decode_image(path, max_pixels=settings.max_image_pixels, max_side_px=settings.max_decode_side_px)
        for path in paths
    ]
    print(f"machine: {machine}; {len(images)} generated 1080p JPEGs decoded to {images[0].size}")
    header = f"{'analyzer':10s} {'prepare':>9s} {'run':>9s} {'run, prepared':>14s} {'spared':>8s}"
    print(f"{header} {'bound it set':>14s}")
    rows: dict[str, dict[str, float]] = {}
    for name in ANALYZERS:
        rows[name] = measure(executor.analyzer(name), images, args.repeat)
    rows["together"] = {
        key: sum(row[key] for row in rows.values()) for key in ("prepare_ms", "run_ms", "run_prepared_ms")
    }
    clip = executor.analyzer("clip")
    if getattr(clip, "nsfw_classifier", None) is not None:
        # A batch of clip and objects without the nsfw analyzer (the first target): "run" is CLIP with its
        # own inputs prepared, as before; "run, prepared" adds the classifier's, as the executor now does.
        rows["clip+clf"] = measure_clip_with_classifier(clip, images, args.repeat)
    for name, row in rows.items():
        print(
            f"{name:10s} {row['prepare_ms']:7.2f}ms {row['run_ms']:7.2f}ms {row['run_prepared_ms']:12.2f}ms "
            f"{row['run_ms'] - row['run_prepared_ms']:6.2f}ms {1000 / row['prepare_ms']:8.0f} img/s"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "images": len(images), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
