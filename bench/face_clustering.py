"""Face clustering on a labelled set built offline: the real faces in the shared photos, augmented, embedded and
clustered with the product's code. Prints pairwise precision and recall and the number of people vs identities.

The identities are the 5 faces that the real MTCNN (facenet-pytorch's bundled weights) finds in bus.jpg, zidane.jpg
and grace_hopper.jpg. Each becomes ``--crops`` crops with box jitter, scale, mirror, brightness, blur and JPEG
quality changes; the crops are embedded by the faces analyzer's own embedder path (seeded, untrained
InceptionResnetV1 in place of the VGGFace2 weights, which cannot be had offline) and arrive in ``--jobs`` jobs in a
shuffled order: each job's faces first try known people (step a), then the unassigned faces are clustered (step b),
as ``orchestrator.people.faces`` does.

    python bench/face_clustering.py [--crops 20] [--jobs 4] [--seed 0] [--strength 0.2] [--sweep]

With random weights this measures the mechanics (augmentation-invariance of one face versus other faces) and the
thresholds are calibrated for this embedder (``RANDOM_FACENET_PARAMS``); the product's defaults are for VGGFace2.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpu_worker.models.faces import FacesAnalyzer  # noqa: E402
from gpu_worker.settings import WorkerSettings  # noqa: E402
from gpu_worker.store import ModelStore  # noqa: E402
from orchestrator.people.clustering import (  # noqa: E402
    ClusteringParams,
    assign,
    cluster,
    pairwise_precision_recall,
)
from tests.fixtures.tiny_faces import TINY_FACENET_FILE, TINY_FACENET_ID, build_tiny_facenet, faces_catalog_toml  # noqa: E402

PHOTOS = ("bus.jpg", "zidane.jpg", "grace_hopper.jpg")
SHARED_MEDIA = ROOT.parent / "shared" / "media"
# Calibrated on this set with the seeded embedder (see --sweep): it maps every face near one direction (different
# faces 0.02-0.14 apart in cosine distance), so only a tight radius separates them. Real VGGFace2 spreads far wider.
RANDOM_FACENET_PARAMS = ClusteringParams(max_distance=0.02, min_faces=3, assign_max_distance=0.02, core_neighbours=2)
# The seeded embedder is not invariant to strong changes (a mirrored crop moves ~0.02, as far as another face), so
# the default set holds mild ones, like re-detections of one face in other frames or re-encoded copies.
DEFAULT_STRENGTH = 0.2


@dataclass(frozen=True)
class Evaluation:
    """What one run measured."""

    precision: float
    recall: float
    people: int
    identities: int
    unassigned: int
    faces: int


def load_analyzer(workdir: Path) -> FacesAnalyzer:
    """The faces analyzer with the real MTCNN (from the installed wheel) and the seeded embedder (a local folder)."""
    build_tiny_facenet(workdir / "tiny")
    catalog = workdir / "catalog.toml"
    catalog.write_text(
        faces_catalog_toml(
            TINY_FACENET_ID, {TINY_FACENET_FILE: None}, [{"kind": "local", "path": str(workdir / "tiny")}]
        ),
        encoding="utf-8",
    )
    store = ModelStore(WorkerSettings(models_dir=workdir / "models", catalog_paths=[catalog], allow_download=False))
    analyzer = FacesAnalyzer(store, TINY_FACENET_ID)
    analyzer.load("cpu")
    return analyzer


def real_faces(analyzer: FacesAnalyzer, media: Path) -> list[tuple[Image.Image, tuple[float, float, float, float]]]:
    """Every face MTCNN finds (p >= 0.9) in the shared photos: the photo and the face's box in its pixels."""
    found = []
    for name in PHOTOS:
        image = ImageOps.exif_transpose(Image.open(media / name)).convert("RGB")
        for face in analyzer.detect([image])[0]:
            found.append((image, face.box))
    return found


def augment(image: Image.Image, box: Sequence[float], rng: random.Random, strength: float = 1.0) -> Image.Image:
    """One crop of a face as another photo of it might show it: shifted and scaled box, maybe mirrored, other
    brightness, some blur, another JPEG quality. ``strength`` scales every change (1.0: shift 8 %, scale up to
    +25 %, brightness 30 %, blur radius 1.5 px, JPEG quality down to 30, half the crops mirrored)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    scale = 1.0 + rng.uniform(-0.1, 0.25) * strength
    shift = 0.08 * strength
    cx, cy = (x1 + x2) / 2 + rng.uniform(-shift, shift) * w, (y1 + y2) / 2 + rng.uniform(-shift, shift) * h
    crop = image.crop((cx - w * scale / 2, cy - h * scale / 2, cx + w * scale / 2, cy + h * scale / 2))
    if rng.random() < 0.5 * strength:
        crop = ImageOps.mirror(crop)
    crop = ImageEnhance.Brightness(crop).enhance(1.0 + rng.uniform(-0.3, 0.3) * strength)
    crop = crop.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.5) * strength))
    out = io.BytesIO()
    crop.save(out, format="JPEG", quality=round(95 - rng.uniform(0, 65) * strength))
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def labelled_set(
    analyzer: FacesAnalyzer, media: Path, crops: int, seed: int, strength: float = 1.0
) -> tuple[np.ndarray, list[int]]:
    """Embeddings of ``crops`` augmented crops per real face, and each crop's identity."""
    rng = random.Random(seed)
    images, labels = [], []
    for identity, (image, box) in enumerate(real_faces(analyzer, media)):
        images += [augment(image, box, rng, strength) for _ in range(crops)]
        labels += [identity] * crops
    return analyzer.embed(images).numpy().astype(np.float32), labels


def incremental_people(vectors: np.ndarray, jobs: int, seed: int, params: ClusteringParams) -> list[int | None]:
    """Faces arriving in ``jobs`` jobs in a shuffled order, clustered the way finished jobs are."""
    order = np.random.default_rng(seed).permutation(len(vectors))
    person: list[int | None] = [None] * len(vectors)
    people = 0
    for part in np.array_split(order, jobs):
        members = [i for i in range(len(vectors)) if person[i] is not None]
        owners = [p for p in (person[i] for i in members) if p is not None]
        for found in assign(vectors[part], vectors[members], owners, params):
            person[int(part[found.face])] = found.person
        pending = [i for i in range(len(vectors)) if person[i] is None]
        for group in cluster(vectors[pending], params):
            for index in group:
                person[pending[index]] = people
            people += 1
    return person


def evaluate(vectors: np.ndarray, labels: list[int], *, jobs: int, seed: int, params: ClusteringParams) -> Evaluation:
    """Cluster the labelled set and score it."""
    person = incremental_people(vectors, jobs, seed, params)
    precision, recall = pairwise_precision_recall(person, labels)
    return Evaluation(
        precision=precision,
        recall=recall,
        people=len({p for p in person if p is not None}),
        identities=len(set(labels)),
        unassigned=sum(p is None for p in person),
        faces=len(labels),
    )


def distance_summary(vectors: np.ndarray, labels: list[int]) -> tuple[float, float, float]:
    """95th percentile of same-identity cosine distances, 5th percentile and minimum of different-identity ones."""
    distances = 1.0 - vectors @ vectors.T
    same = np.equal.outer(labels, labels)
    upper = np.triu(np.ones_like(same), k=1)
    inside = distances[same & upper]
    across = distances[~same & upper]
    return float(np.percentile(inside, 95)), float(np.percentile(across, 5)), float(across.min())


def main() -> None:
    """Build the set, cluster it, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crops", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--media", type=Path, default=SHARED_MEDIA)
    parser.add_argument(
        "--strength", type=float, default=DEFAULT_STRENGTH, help="augmentation strength (0: copies, 1: strong)"
    )
    parser.add_argument("--sweep", action="store_true", help="also try other max_distance values")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        analyzer = load_analyzer(Path(work))
        vectors, labels = labelled_set(analyzer, args.media, args.crops, args.seed, args.strength)
    built = time.perf_counter() - started
    same95, across5, across_min = distance_summary(vectors, labels)
    print(f"faces {len(labels)}  identities {len(set(labels))}  strength {args.strength}  built in {built:.1f} s")
    print(
        f"cosine distance: same identity p95 {same95:.4f}; different identities p5 {across5:.4f}, min {across_min:.4f}"
    )
    for eps in [0.01, 0.015, 0.02, 0.025, 0.03, 0.05] if args.sweep else [RANDOM_FACENET_PARAMS.max_distance]:
        params = ClusteringParams(max_distance=eps, min_faces=3, assign_max_distance=eps, core_neighbours=2)
        result = evaluate(vectors, labels, jobs=args.jobs, seed=args.seed, params=params)
        print(
            f"max_distance {eps:.3f}: precision {result.precision:.3f}  recall {result.recall:.3f}  "
            f"people {result.people} / identities {result.identities}  unassigned {result.unassigned}/{result.faces}"
        )


if __name__ == "__main__":
    main()
