"""Grouping near-duplicates: hash and embedding pairs, transitive groups, thresholds, and the scalable hash search
agreeing with comparing every pair."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from orchestrator.duplicates.groups import (
    BRUTE_FORCE_MAX,
    Link,
    bands,
    embedding_pairs,
    equal_groups,
    group_key,
    hash_pairs,
    hash_pairs_brute_force,
    join,
    near_groups,
)


def _flip(value: int, bits: list[int]) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def _hashes(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64)


def _pairs(found: object) -> set[tuple[int, int]]:
    return set(zip(found.a.tolist(), found.b.tolist(), strict=True))  # type: ignore[attr-defined]


def _near(hashes: list[int], *, max_distance: int = 8) -> list[tuple[int, ...]]:
    groups = near_groups(
        hash_items=np.arange(len(hashes), dtype=np.int64),
        hashes=_hashes(hashes),
        embedding_items=np.empty(0, np.int64),
        embeddings=np.empty((0, 0), np.float32),
        max_distance=max_distance,
        min_cosine=None,
    )
    return [group.members for group in groups]


@pytest.mark.parametrize("max_distance", [0, 3, 8, 12])
def test_bands_cover_all_64_bits_once_and_number_one_more_than_the_distance(max_distance: int) -> None:
    layout = bands(max_distance)

    assert len(layout) == max_distance + 1
    assert sum(width for _, width in layout) == 64
    assert [shift for shift, _ in layout] == sorted({shift for shift, _ in layout})


def test_the_band_search_finds_exactly_the_pairs_that_comparing_every_pair_finds() -> None:
    rng = np.random.default_rng(3)
    n = BRUTE_FORCE_MAX * 2
    values = [int(v) for v in rng.integers(0, 2**63, size=n, dtype=np.uint64)]
    for k in range(300):  # planted copies 0 to 12 bits away, including at exactly the threshold
        values[n - 1 - k] = _flip(values[k], [int(b) for b in rng.choice(64, size=k % 13, replace=False)])
    hashes = _hashes(values)

    for max_distance in (0, 5, 8):
        fast = hash_pairs(hashes, max_distance=max_distance)
        slow = hash_pairs_brute_force(hashes, max_distance=max_distance)
        assert _pairs(fast) == _pairs(slow)
        assert len(fast) >= 300 * (max_distance + 1) // 13
        assert np.all(fast.a < fast.b)
        assert np.all(fast.value <= max_distance)


def test_hashes_are_grouped_transitively_even_when_the_ends_are_far_apart() -> None:
    start = 0x0123456789ABCDEF
    middle = _flip(start, [0, 1, 2, 3, 4, 5])
    end = _flip(middle, [10, 11, 12, 13, 14, 15])  # 12 bits from start: only linked through the middle
    unrelated = start ^ 0xFFFFFFFF00000000

    assert _near([start, unrelated, middle, end]) == [(0, 2, 3)]


def test_the_threshold_decides_and_is_inclusive() -> None:
    base = 0x0F0F0F0F0F0F0F0F
    eight_away = _flip(base, list(range(8)))
    nine_away = _flip(base, list(range(20, 29)))

    assert _near([base, eight_away, nine_away], max_distance=8) == [(0, 1)]
    assert _near([base, eight_away, nine_away], max_distance=7) == []
    assert _near([base, nine_away], max_distance=9) == [(0, 1)]


def test_an_item_is_never_paired_with_itself_and_lone_items_form_no_group() -> None:
    links = [Link(4, 4, 0, None)]

    assert join(links) == []
    assert _near([0x1234567812345678]) == []


def test_identical_hashes_make_one_group_whose_tree_has_one_link_less_than_members() -> None:
    value = 0x5555AAAA5555AAAA

    groups = near_groups(
        hash_items=np.arange(4, dtype=np.int64),
        hashes=_hashes([value] * 4),
        embedding_items=np.empty(0, np.int64),
        embeddings=np.empty((0, 0), np.float32),
    )

    assert [g.members for g in groups] == [(0, 1, 2, 3)]
    assert len(groups[0].links) == 3 and all(link.phash_distance == 0 for link in groups[0].links)


def test_embeddings_join_pictures_whose_hashes_differ_and_the_cosine_threshold_decides() -> None:
    rng = np.random.default_rng(5)
    base = rng.standard_normal(64).astype(np.float32)
    close = base + 0.1 * rng.standard_normal(64).astype(np.float32)  # cosine about 0.995
    other = rng.standard_normal(64).astype(np.float32)
    vectors = np.stack([base, other, close * 3.0])  # scale does not matter: rows are normalised

    def grouped(min_cosine: float) -> list[tuple[int, ...]]:
        groups = near_groups(
            hash_items=np.asarray([10, 11, 12], np.int64),
            hashes=_hashes([0x0123456789ABCDEF, 0xFEDCBA9876543210, 0x00FF00FF00FF00FF]),
            embedding_items=np.asarray([10, 11, 12], np.int64),
            embeddings=vectors,
            min_cosine=min_cosine,
        )
        return [group.members for group in groups]

    assert grouped(0.95) == [(10, 12)]
    assert grouped(0.999) == []


def test_a_pair_close_by_both_measures_carries_both_in_one_link() -> None:
    vectors = np.asarray([[1.0, 0.0], [0.99, 0.1]], np.float32)

    groups = near_groups(
        hash_items=np.asarray([0, 1], np.int64),
        hashes=_hashes([0xAAAA, 0xAAAB]),
        embedding_items=np.asarray([0, 1], np.int64),
        embeddings=vectors,
    )

    (link,) = groups[0].links
    assert link.phash_distance == 1 and link.cosine is not None and link.cosine > 0.99


def test_blocked_embedding_search_matches_the_full_similarity_matrix() -> None:
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors[200:260] = vectors[:60] + 0.05 * rng.standard_normal((60, 16)).astype(np.float32)
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    full = normed @ normed.T
    expected = {(i, j) for i in range(300) for j in range(i + 1, 300) if full[i, j] >= 0.97}

    found = embedding_pairs(vectors, min_cosine=0.97, block_rows=64)

    assert _pairs(found) == expected and len(expected) >= 60


def test_a_zero_embedding_matches_nothing() -> None:
    found = embedding_pairs(np.asarray([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]], np.float32), min_cosine=0.5)

    assert len(found) == 0


def test_groups_come_largest_first() -> None:
    a, b = 0x1111111111111111, 0x7777000077770000

    assert _near([a, b, b, a ^ 1, b ^ 2]) == [(1, 2, 4), (0, 3)]


def test_equal_keys_group_and_none_never_matches() -> None:
    assert equal_groups(["x", None, "y", "x", None, "x", "y", "z"]) == [[0, 3, 5], [2, 6]]


def test_a_group_key_depends_on_the_members_not_their_order() -> None:
    ids = [uuid.uuid4() for _ in range(3)]

    assert group_key(ids) == group_key(reversed(ids))
    assert group_key(ids) != group_key(ids[:2])
    assert len(group_key(ids)) == 64
