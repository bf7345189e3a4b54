"""Half precision against float32: what the image analyzers find on the shared media, and how long they take.

    python bench/half_precision.py                         # CPU: float16 (precision "half") against float32
    python bench/half_precision.py --device cuda --json half.json   # GPU: the default ("auto") against float32

A GPU worker computes CLIP, FaceNet and YOLO in float16 by default (``GPUW_PRECISION=auto``). The issue's rule is that
results stay equivalent: the same tags and counts on the shared media, embeddings with a cosine of at least 0.999
against float32. For each analyzer this prints the smallest embedding cosine, the largest difference in any score,
whether every image kept its tags (names, in order) and its face or person count, and milliseconds per image in
each precision (on a CPU, float16 is emulated and slow; only a GPU's times mean anything).

Models (``bench/bench_models.py``): seeded full-size OpenCLIP ViT-B-32 and InceptionResnetV1, the real MTCNN (float32
in both: detection is not changed by this setting) and, when ../shared/models is present, the real YOLOv8s person
detector, else the seeded YOLO11n. Pictures: the shared photos and four frames of the shared video, decoded as the
worker decodes them. Nothing is asserted (``tests/unit/test_half_precision.py`` asserts the same on tiny models):
record the figures with the command, machine and date in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_models import build_bench_catalog  # noqa: E402

SHARED_MEDIA = REPO.parent / "shared" / "media"
ANALYZERS = ("clip", "faces", "objects")
OPTIONS: dict[str, dict[str, Any]] = {"objects": {"conf": 0.5}}


def cosine(a: Any, b: Any) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def embeddings(output: Any) -> list[list[float]]:
    """The output's embeddings: CLIP's image embedding, or each face's."""
    if output.embedding is not None:
        return [output.embedding]
    return [face["embedding"] for face in output.payload.get("faces", []) if "embedding" in face]


def count(output: Any) -> int | None:
    """Faces or people in the picture; None for an analyzer that counts nothing."""
    payload = output.payload
    return payload.get("face_count", payload.get("person_count"))


def scores(output: Any) -> list[float]:
    """Every score the output carries: tags, then detections' and faces' own."""
    found = [tag.score for tag in output.tags]
    found += [d["score"] for d in output.payload.get("detections", [])]
    found += [f["probability"] for f in output.payload.get("faces", [])]
    return found


def compare(half: list[Any], full: list[Any]) -> dict[str, Any]:
    pairs = [(a, b) for h, f in zip(half, full, strict=True) if count(h) == count(f)
             for a, b in zip(embeddings(h), embeddings(f), strict=True)]  # fmt: skip
    cosines = [cosine(a, b) for a, b in pairs]
    differences = [
        abs(a - b)
        for h, f in zip(half, full, strict=True)
        if len(scores(h)) == len(scores(f))
        for a, b in zip(scores(h), scores(f), strict=True)
    ]
    return {
        "min_cosine": min(cosines) if cosines else None,
        "embeddings": len(cosines),
        "max_score_difference": max(differences) if differences else 0.0,
        "same_tags": sum([t.tag for t in h.tags] == [t.tag for t in f.tags] for h, f in zip(half, full, strict=True)),
        "same_counts": sum(count(h) == count(f) for h, f in zip(half, full, strict=True)),
        "counts": [count(f) for f in full],
        "images": len(full),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per figure (the best is kept)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mam-bench")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (SHARED_MEDIA / "bus.jpg").exists():
        sys.exit("../shared/media is absent: this benchmark compares results on its photos and video")

    os.environ.setdefault("GPUW_MODELS_DIR", str(args.work / "cache"))
    catalog, env = build_bench_catalog(args.work / "models")
    os.environ.update(env)
    if "bench-person-detector" in catalog.read_text(encoding="utf-8"):
        os.environ["GPUW_OBJECTS_MODEL"] = "bench-person-detector"

    import torch

    from gpu_worker.decode import decode_image, decode_video_frames
    from gpu_worker.models import analyzer_class
    from gpu_worker.settings import Precision, WorkerSettings
    from gpu_worker.store import ModelStore

    settings = WorkerSettings()
    limits = {"max_pixels": settings.max_image_pixels, "max_side_px": settings.max_decode_side_px}
    pictures = [decode_image(SHARED_MEDIA / n, **limits) for n in ("bus.jpg", "zidane.jpg", "grace_hopper.jpg")]
    pictures += [f.image for f in decode_video_frames(SHARED_MEDIA / "talking_zidane_bus.mp4", count=4, **limits)]
    half_precision = Precision.AUTO if args.device == "cuda" else Precision.HALF

    results: dict[str, dict[str, Any]] = {}
    for name in ANALYZERS:
        outputs, times = {}, {}
        for precision in (Precision.FULL, half_precision):
            precise = WorkerSettings(precision=precision)
            cls = analyzer_class(name)
            analyzer = cls(ModelStore(precise), cls.default_model(precise))
            analyzer.load(args.device)
            options = OPTIONS.get(name, {})
            analyzer.run(pictures[:2], options)  # warm-up
            best = float("inf")
            for _ in range(args.repeat):
                began = time.perf_counter()
                outputs[precision] = analyzer.run(pictures, options)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - began)
            times[precision] = best / len(pictures) * 1000
            model = analyzer.model_id
        row = compare(outputs[half_precision], outputs[Precision.FULL])
        row.update(model=model, full_ms=times[Precision.FULL], half_ms=times[half_precision])
        results[name] = row

    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{device}, torch {torch.__version__}; {len(pictures)} pictures; float16 ({half_precision}) vs float32")
    print(f"{'analyzer':9} {'model':24} {'min cosine':>11} {'max score diff':>15} {'same tags':>10} "
          f"{'same counts':>12} {'fp32 ms':>8} {'fp16 ms':>8}  counts")  # fmt: skip
    for name, row in results.items():
        low = "-" if row["min_cosine"] is None else f"{row['min_cosine']:.6f}"
        print(f"{name:9} {row['model']:24} {low:>11} {row['max_score_difference']:15.6f} "
              f"{row['same_tags']:>5}/{row['images']:<4} {row['same_counts']:>7}/{row['images']:<4} "
              f"{row['full_ms']:8.1f} {row['half_ms']:8.1f}  {row['counts']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"device": device, "results": results}, indent=2))


if __name__ == "__main__":
    main()
