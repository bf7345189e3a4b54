"""Face clustering measured on a labelled set built offline (bench/face_clustering.py): the 5 real faces MTCNN finds
in the shared photos, each as mildly changed crops, embedded by the faces analyzer's embedder path with the seeded
FaceNet and clustered by the product's two steps, arriving over four jobs.

The seeded FaceNet identifies no one, so this checks the mechanics with thresholds calibrated for it
(``RANDOM_FACENET_PARAMS``); measured 2026-11: precision 1.000, recall 0.847, 7 people for 5 identities with 20
crops per face. The product's defaults are for the VGGFace2 weights (docs/people.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_MEDIA

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import face_clustering as bench

pytestmark = pytest.mark.integration

CROPS_PER_FACE = 12


def test_augmented_real_faces_cluster_into_their_identities_with_high_precision(tmp_path: Path) -> None:
    if not (SHARED_MEDIA / "bus.jpg").exists():
        pytest.skip("../shared/media is absent (it ships beside the repository on development machines)")
    analyzer = bench.load_analyzer(tmp_path)
    vectors, labels = bench.labelled_set(
        analyzer, SHARED_MEDIA, CROPS_PER_FACE, seed=0, strength=bench.DEFAULT_STRENGTH
    )

    result = bench.evaluate(vectors, labels, jobs=4, seed=0, params=bench.RANDOM_FACENET_PARAMS)

    assert result.identities == 5 and result.faces == 5 * CROPS_PER_FACE
    assert result.precision >= 0.95, result
    assert result.recall >= 0.75, result
    assert 5 <= result.people <= 8, result
    assert result.unassigned <= result.faces // 10, result
