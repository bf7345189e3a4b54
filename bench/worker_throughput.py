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
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO.parent / "shared" / "media"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gpu_worker.benchmark import generate_corpus, measure_images, measure_transcription  # noqa: E402

if TYPE_CHECKING:
    from gpu_worker.executor import InProcessExecutor

IMAGE_ANALYZERS = ("clip", "objects", "faces", "nsfw")


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


def start_executor(
    work: Path, device: str, catalog: Path | None, env: dict[str, str] | None = None
) -> tuple[InProcessExecutor, dict[str, Any]]:
    """An executor on ``device`` over ``catalog``'s default models (default: the seeded bench catalog built under
    ``work``), with ``env`` applied first; and the figures that say which machine measured."""
    os.environ.setdefault("GPUW_MODELS_DIR", str(work / "cache"))
    os.environ["GPUW_DEVICE"] = device
    os.environ.update(env or {})
    if catalog:
        os.environ["GPUW_CATALOG_PATHS"] = json.dumps([str(catalog.resolve())])
    else:
        from bench_models import build_bench_catalog

        _, catalog_env = build_bench_catalog(work / "models")
        os.environ.update(catalog_env)

    from gpu_worker.executor import InProcessExecutor
    from gpu_worker.settings import WorkerSettings

    executor = InProcessExecutor(WorkerSettings())
    info = executor.device_info
    machine = {
        "device": executor.device,
        "device_name": info.name if info else executor.device,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    return executor, machine


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

    executor, figures = start_executor(args.work, args.device, args.catalog)
    device = executor.device
    analyzers = [a for a in args.analyzers.split(",") if a]
    corpora = {
        "generated 1080p": generate_corpus(args.work / "corpus-1080p", args.images),
        "shared photos": shared_corpus(args.work / "corpus-shared", args.images),
    }
    figures["results"] = []
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
    speech = measure_transcription(executor, SHARED_MEDIA / "speech_en.wav", 7.625, args.repeat)
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
