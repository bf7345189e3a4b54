"""Worker throughput: images/s of the full image pipeline and of each analyzer, batched against per-image sequential
processing of the same models, on generated 1080p JPEGs and on the shared photos; real-time factor of transcription.

    python bench/worker_throughput.py                     # offline: full-size architectures, seeded weights
    python bench/worker_throughput.py --catalog config/models.toml --no-bench-models   # the pretrained defaults
    python bench/worker_throughput.py --images 64 --device cuda --json out.json

It prints absolute figures and the batched/sequential ratio. Nothing is asserted: record results in
docs/performance.md with the command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO.parent / "shared" / "media"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

IMAGE_ANALYZERS = ("clip", "objects", "faces", "nsfw")


def generate_corpus(folder: Path, count: int, width: int = 1920, height: int = 1080) -> list[Path]:
    """``count`` textured 1080p JPEGs (noise, gradients and shapes, so that decoding costs what a photo costs)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
        base = (x * rng.uniform(0.2, 1.0, 3) + y * rng.uniform(0.2, 1.0, 3)) / 2
        noise = rng.normal(0, 18, (height, width, 3))
        image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, width - 200)), int(rng.integers(0, height - 200))
            size = int(rng.integers(60, 400))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.ellipse((x0, y0, x0 + size, y0 + size), fill=colour)
        path = folder / f"gen{index:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def shared_corpus(folder: Path, count: int) -> list[Path]:
    """The shared photos, copied round-robin to ``count`` files."""
    photos = [SHARED_MEDIA / n for n in ("bus.jpg", "zidane.jpg", "grace_hopper.jpg") if (SHARED_MEDIA / n).exists()]
    if not photos:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        target = folder / f"{index:04d}-{photos[index % len(photos)].name}"
        shutil.copy(photos[index % len(photos)], target)
        paths.append(target)
    return paths


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` runs (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure_images(executor: Any, analyzers: list[str], paths: list[Path], repeat: int) -> dict[str, float]:
    """Images/s batched (one manifest) and sequential (one manifest per image) for the same analyzers."""
    from gpu_worker.contract import BatchManifest, ManifestItem, MediaKind

    items = [ManifestItem(asset_id=str(i), media_kind=MediaKind.IMAGE, path=str(p)) for i, p in enumerate(paths)]
    executor.run(BatchManifest(batch_id="warm", analyzers=analyzers, items=items[:2]))

    def batched() -> None:
        result = executor.run(BatchManifest(batch_id="b", analyzers=analyzers, items=items))
        failed = [i.errors for i in result.items if i.errors]
        if failed or result.unavailable:
            raise RuntimeError(f"benchmark run failed: {failed[:2]} {result.unavailable}")

    def sequential() -> None:
        for item in items:
            executor.run(BatchManifest(batch_id="s", analyzers=analyzers, items=[item]))

    batched_s = timed(batched, repeat)
    sequential_s = timed(sequential, repeat)
    return {
        "images": len(items),
        "batched_images_per_s": len(items) / batched_s,
        "sequential_images_per_s": len(items) / sequential_s,
        "ratio": sequential_s / batched_s,
    }


def measure_transcription(executor: Any, repeat: int) -> dict[str, float] | None:
    """Real-time factor (processing time / audio duration) on the shared speech, one clip and four at once."""
    from gpu_worker.contract import BatchManifest, ManifestItem, MediaKind

    speech = SHARED_MEDIA / "speech_en.wav"
    if not speech.exists():
        return None
    duration_s = 7.625
    items = [ManifestItem(asset_id=str(i), media_kind=MediaKind.AUDIO, path=str(speech)) for i in range(4)]
    executor.run(BatchManifest(batch_id="warm", analyzers=["transcribe"], items=items[:1]))
    one_s = timed(lambda: executor.run(BatchManifest(batch_id="t", analyzers=["transcribe"], items=items[:1])), repeat)
    four_s = timed(lambda: executor.run(BatchManifest(batch_id="t", analyzers=["transcribe"], items=items)), repeat)
    return {"audio_s": duration_s, "rtf_one": one_s / duration_s, "rtf_four": four_s / (4 * duration_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="images per corpus")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per figure (the best is kept)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--analyzers", default=",".join(IMAGE_ANALYZERS))
    parser.add_argument("--catalog", type=Path, help="measure this catalog's default models instead")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mam-bench")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    os.environ.setdefault("GPUW_MODELS_DIR", str(args.work / "cache"))
    os.environ["GPUW_DEVICE"] = args.device
    if args.catalog:
        os.environ["GPUW_CATALOG_PATHS"] = json.dumps([str(args.catalog.resolve())])
    else:
        from bench_models import build_bench_catalog

        _, env = build_bench_catalog(args.work / "models")
        os.environ.update(env)

    from gpu_worker.executor import InProcessExecutor
    from gpu_worker.settings import WorkerSettings

    executor = InProcessExecutor(WorkerSettings())
    device = executor.device
    info = executor.device_info
    analyzers = [a for a in args.analyzers.split(",") if a]
    corpora = {
        "generated 1080p": generate_corpus(args.work / "corpus-1080p", args.images),
        "shared photos": shared_corpus(args.work / "corpus-shared", args.images),
    }
    figures: dict[str, Any] = {
        "device": device,
        "device_name": info.name if info else device,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "results": [],
    }
    print(f"device: {figures['device_name']} ({device}), {os.cpu_count()} cores, {args.images} images per corpus")
    header = f"{'corpus':<16} {'analyzers':<24} {'batched img/s':>14} {'sequential img/s':>17} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for corpus_name, paths in corpora.items():
        if not paths:
            continue
        for label, selected in [*((a, [a]) for a in analyzers), ("full pipeline", analyzers)]:
            row = measure_images(executor, selected, paths, args.repeat)
            figures["results"].append({"corpus": corpus_name, "analyzers": label, **row})
            print(
                f"{corpus_name:<16} {label:<24} {row['batched_images_per_s']:>14.2f} "
                f"{row['sequential_images_per_s']:>17.2f} {row['ratio']:>6.2f}"
            )
    speech = measure_transcription(executor, args.repeat)
    if speech is not None:
        figures["transcription"] = speech
        print(
            f"transcription (speech_en.wav, {speech['audio_s']:.1f} s): real-time factor {speech['rtf_one']:.3f} "
            f"for one clip ({1 / speech['rtf_one']:.1f}x real time), {speech['rtf_four']:.3f} per clip for four"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
