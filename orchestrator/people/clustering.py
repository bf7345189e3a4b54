"""Density-based face clustering on L2-normalised embeddings (pure numpy; no database, no I/O).

Two steps, in the spirit of Immich's incremental recognition and PhotoPrism's cluster radius and core size:

(a) ``assign``: a new face joins the person of its nearest already-assigned face when that face is within
    ``assign_max_distance`` (cosine distance) and the person has at least ``min(core_neighbours, person size)``
    members within that distance (so one stray member cannot pull faces in).
(b) ``cluster``: DBSCAN over the faces no person took: a face with at least ``min_faces`` faces (itself included)
    within ``max_distance`` is a core; cores within ``max_distance`` of each other form one group; a non-core face
    goes to the group of its nearest core within ``max_distance``; every other face stays unassigned (noise). A
    group therefore never has fewer than ``min_faces`` faces.

Cosine distance is ``1 - a·b`` for unit vectors (0 same direction, 1 orthogonal, 2 opposite). Faces assigned by
hand never reach these functions as candidates: the caller passes only faces clustering may move.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]

EMBEDDING_DIM = 512
# Rows of the similarity matrix computed at once: 2048 x n float32 keeps a pass under ~80 MB for 10 000 faces.
SIMILARITY_CHUNK_ROWS = 2048


@dataclass(frozen=True)
class ClusteringParams:
    """Thresholds of both steps; the defaults are for the VGGFace2 FaceNet (see docs/people.md for their sources)."""

    # DBSCAN eps, cosine distance. Immich's default maxDistance is 0.5 for its ArcFace model; FaceNet/VGGFace2 pairs
    # of one person mostly lie below ~0.4 (L2 ~0.9), so 0.4 trades a little recall for fewer wrong merges.
    max_distance: float = 0.4
    # DBSCAN min_samples and the smallest new person; Immich's minFaces default is 3.
    min_faces: int = 3
    # Step (a): how close a new face must be to a person's member, cosine distance.
    assign_max_distance: float = 0.4
    # Step (a): members within reach before a face joins, capped at the person's size. PhotoPrism asks 4 faces for a
    # cluster core; 2 keeps one outlier member from pulling strangers in while small people still grow.
    core_neighbours: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.max_distance < 2.0 or not 0.0 < self.assign_max_distance < 2.0:
            raise ValueError("distances are cosine distances in (0, 2)")
        if self.min_faces < 1 or self.core_neighbours < 1:
            raise ValueError("min_faces and core_neighbours are at least 1")


@dataclass(frozen=True)
class Assignment:
    """Step (a)'s answer for one new face: the index of the person it joins and the cosine distance that decided."""

    face: int
    person: int
    distance: float


def normalise(vectors: npt.ArrayLike) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError("expected a 2-d array of embeddings")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    result: Vectors = np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)
    return result


def centroid(members: npt.ArrayLike) -> Vectors:
    """The L2-normalised mean of unit embeddings (a person's direction), shape (dim,)."""
    array = normalise(members)
    if len(array) == 0:
        raise ValueError("a centroid needs at least one member")
    mean: Vectors = normalise(array.mean(axis=0, keepdims=True))[0]
    return mean


def assign(
    new_faces: npt.ArrayLike, members: npt.ArrayLike, member_people: Sequence[int], params: ClusteringParams
) -> list[Assignment]:
    """Step (a): which new faces join an existing person.

    ``members`` are the embeddings of faces that already belong to people, ``member_people[i]`` the person index of
    member ``i``. Returns one ``Assignment`` per face that joins; faces not named stay unassigned for step (b).
    """
    faces, known = normalise(new_faces), normalise(members)
    if len(faces) == 0 or len(known) == 0:
        return []
    if len(member_people) != len(known):
        raise ValueError("member_people must name one person per member")
    people = np.asarray(member_people, dtype=np.int64)
    sizes = np.bincount(people)
    found = []
    for start in range(0, len(faces), SIMILARITY_CHUNK_ROWS):
        distances = 1.0 - faces[start : start + SIMILARITY_CHUNK_ROWS] @ known.T
        for row, face_distances in enumerate(distances):
            within = face_distances <= params.assign_max_distance
            if not within.any():
                continue
            # A person qualifies with enough members in reach; of those, the one with the nearest member wins. Looking
            # only at the single nearest member would let one outlier (a face moved there by hand) block the face.
            close = np.bincount(people[within], minlength=len(sizes))
            qualified = close >= np.minimum(params.core_neighbours, sizes)
            candidates = within & qualified[people]
            if not candidates.any():
                continue
            nearest = int(np.flatnonzero(candidates)[np.argmin(face_distances[candidates])])
            found.append(
                Assignment(face=start + row, person=int(people[nearest]), distance=float(face_distances[nearest]))
            )
    return found


def _neighbours(faces: Vectors, eps: float) -> list[npt.NDArray[np.int64]]:
    """For each face, the indices of the faces within ``eps`` cosine distance (itself included)."""
    result = []
    for start in range(0, len(faces), SIMILARITY_CHUNK_ROWS):
        close = (1.0 - faces[start : start + SIMILARITY_CHUNK_ROWS] @ faces.T) <= eps
        result += [np.flatnonzero(row) for row in close]
    return result


def cluster(faces: npt.ArrayLike, params: ClusteringParams) -> list[list[int]]:
    """Step (b): DBSCAN over unassigned faces. Returns groups of face indices (each sorted, each at least
    ``min_faces`` long), ordered by their smallest index; faces in no group are noise.

    Border faces go to the group of their nearest core, so the answer does not depend on the input order beyond the
    order of the returned lists.
    """
    vectors = normalise(faces)
    count = len(vectors)
    if count < params.min_faces:
        return []
    neighbours = _neighbours(vectors, params.max_distance)
    is_core = np.array([len(n) >= params.min_faces for n in neighbours], dtype=bool)
    label = np.full(count, -1, dtype=np.int64)
    groups = 0
    for seed in range(count):
        if not is_core[seed] or label[seed] >= 0:
            continue
        label[seed] = groups
        stack = [seed]
        while stack:
            core = stack.pop()
            for other in neighbours[core]:
                if is_core[other] and label[other] < 0:
                    label[other] = groups
                    stack.append(int(other))
        groups += 1
    for border in np.flatnonzero(~is_core).tolist():
        reachable = [int(c) for c in neighbours[border] if is_core[c]]
        if reachable:
            similarities = vectors[reachable] @ vectors[border]
            label[border] = label[reachable[int(np.argmax(similarities))]]
    members: dict[int, list[int]] = {}
    for face, group in enumerate(label.tolist()):
        if group >= 0:
            members.setdefault(group, []).append(face)
    return sorted(members.values(), key=lambda group: group[0])


def pairwise_precision_recall(predicted: Sequence[int | None], truth: Sequence[int]) -> tuple[float, float]:
    """Pairwise precision and recall of a clustering against identities (``None`` = unassigned, in no pair).

    Precision: of the pairs put together, the share that are one identity. Recall: of the pairs of one identity, the
    share put together. An empty denominator counts as 1.0.
    """
    if len(predicted) != len(truth):
        raise ValueError("one prediction per face")
    together = same = both = 0
    for i in range(len(truth)):
        for j in range(i + 1, len(truth)):
            grouped = predicted[i] is not None and predicted[i] == predicted[j]
            identical = truth[i] == truth[j]
            together += grouped
            same += identical
            both += grouped and identical
    return (both / together if together else 1.0, both / same if same else 1.0)
