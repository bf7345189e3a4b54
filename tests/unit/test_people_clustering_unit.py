"""Face clustering on synthetic embeddings: Gaussian clusters on the 512-d sphere plus random noise faces."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.people.clustering import (
    ClusteringParams,
    assign,
    centroid,
    cluster,
    normalise,
    pairwise_precision_recall,
)

DIM = 512
PARAMS = ClusteringParams(max_distance=0.4, min_faces=3, assign_max_distance=0.4, core_neighbours=2)


def identities(count: int, per: int, spread: float, seed: int) -> tuple[np.ndarray, list[int]]:
    """``per`` faces for each of ``count`` identities: a random direction plus Gaussian noise, unit length."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(count, DIM)))
    faces = [normalise(centres[i] + rng.normal(scale=spread / np.sqrt(DIM), size=(per, DIM))) for i in range(count)]
    return np.concatenate(faces), [i for i in range(count) for _ in range(per)]


def incremental(faces: np.ndarray, order: list[int], batches: int) -> list[int | None]:
    """Faces arriving in ``batches`` parts in ``order``: each part first joins known people (step a), then the still
    unassigned faces of every part so far are clustered (step b). Returns each face's person (by face order)."""
    person: list[int | None] = [None] * len(faces)
    people = 0
    for part in np.array_split(np.asarray(order), batches):
        members = [i for i in range(len(faces)) if person[i] is not None]
        for found in assign(faces[part], faces[members], [person[i] for i in members], PARAMS):  # type: ignore[misc]
            person[int(part[found.face])] = found.person
        pending = [i for i in range(len(faces)) if person[i] is None]
        for group in cluster(faces[pending], PARAMS):
            for index in group:
                person[pending[index]] = people
            people += 1
    return person


def as_partition(person: list[int | None]) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = {}
    for face, p in enumerate(person):
        if p is not None:
            groups.setdefault(p, set()).add(face)
    return {frozenset(g) for g in groups.values()}


def test_dbscan_finds_each_identity_and_leaves_noise_faces_unassigned() -> None:
    faces, _ = identities(count=6, per=8, spread=0.5, seed=1)
    noise = normalise(np.random.default_rng(2).normal(size=(10, DIM)))

    groups = cluster(np.concatenate([faces, noise]), PARAMS)

    assert sorted(map(sorted, groups)) == [list(range(i * 8, i * 8 + 8)) for i in range(6)]
    assert all(index < len(faces) for group in groups for index in group), "no noise face joins a person"


def test_fewer_faces_than_min_faces_make_no_person() -> None:
    faces, _ = identities(count=1, per=2, spread=0.3, seed=3)

    assert cluster(faces, PARAMS) == []


@pytest.mark.parametrize("seed", [10, 11, 12, 13])
def test_incremental_arrival_in_any_order_gives_the_same_people(seed: int) -> None:
    faces, truth = identities(count=5, per=7, spread=0.5, seed=4)
    reference = as_partition(incremental(faces, list(range(len(faces))), batches=1))
    order = np.random.default_rng(seed).permutation(len(faces)).tolist()

    arrived = incremental(faces, order, batches=4)

    assert as_partition(arrived) == reference
    assert pairwise_precision_recall(arrived, truth) == (1.0, 1.0)


def test_a_new_face_joins_the_nearest_person_within_reach_and_strangers_stay_out() -> None:
    faces, truth = identities(count=3, per=6, spread=0.5, seed=5)
    members = list(range(0, 18, 1))
    known, new = [i for i in members if i % 6 != 0], [0, 6, 12]
    stranger = normalise(np.random.default_rng(6).normal(size=(1, DIM)))

    found = assign(np.concatenate([faces[new], stranger]), faces[known], [truth[i] for i in known], PARAMS)

    assert [(a.face, a.person) for a in found] == [(0, 0), (1, 1), (2, 2)]
    assert all(a.distance <= PARAMS.assign_max_distance for a in found)


def test_one_stray_member_cannot_pull_a_face_into_a_large_person() -> None:
    faces, _ = identities(count=2, per=6, spread=0.5, seed=7)
    # Person 0 holds identity 0's faces and, by a mistake, one face of identity 1.
    members = np.concatenate([faces[:6], faces[6:7]])

    found = assign(faces[7:8], members, [0] * 7, PARAMS)

    assert found == [], "one nearby member is fewer than core_neighbours"


def test_a_face_moved_by_hand_into_another_person_does_not_keep_its_look_alikes_out_of_their_own_person() -> None:
    faces, _ = identities(count=2, per=6, spread=0.5, seed=9)
    # Person 0 holds four faces of identity 0; person 1 holds identity 1's faces and one face of identity 0 moved
    # there by hand: the face nearest to a new face of identity 0 may well be that one.
    members = np.concatenate([faces[:4], faces[6:12], faces[4:5]])
    owners = [0] * 4 + [1] * 6 + [1]

    found = assign(faces[5:6], members, owners, PARAMS)

    assert [(a.face, a.person) for a in found] == [(0, 0)]


def test_centroid_is_the_normalised_mean_and_metrics_count_pairs() -> None:
    c = centroid([[1.0, 0.0], [0.0, 1.0]])
    assert np.allclose(c, [np.sqrt(0.5), np.sqrt(0.5)])
    # Faces 0,1,2 are identity 0, faces 3,4 identity 1; the clustering put 0,1 together and 2,3,4 together.
    precision, recall = pairwise_precision_recall([0, 0, 1, 1, 1], [0, 0, 0, 1, 1])
    assert precision == pytest.approx(2 / 4) and recall == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="cosine"):
        ClusteringParams(max_distance=0.0)
