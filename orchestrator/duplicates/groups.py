"""Grouping near-duplicates (pure): pairs of pictures whose perceptual hashes are at most ``max_distance`` bits apart
or whose embeddings have a cosine similarity of at least ``min_cosine``, joined transitively with union-find.

Hash pairs at 100,000 pictures. Comparing every pair is 5e9 XOR-popcounts; instead, multi-index hashing: the 64
bits are cut into ``max_distance + 1`` bands, and by the pigeonhole principle two hashes at most ``max_distance``
bits apart agree exactly on at least one band. Only pairs that share a band value are compared. Exact-match bands
must number ``max_distance + 1``: 4 bands of 16 bits guarantee a shared band only up to 3 bits, which misses most
near-duplicates at our default of 8. Nine bands of 7-8 bits give buckets of about n / 128 pictures, so random hashes
produce about n^2 / 28 candidate pairs instead of n^2 / 2 (measured in ``bench/duplicates.py``). A BK-tree was
rejected: at radius 8 of 64 bits, with unrelated hashes spread around 32 +- 4, a query visits most of the tree.
Within a band, pairs are found without Python loops: sort the band values, then compare each value with the one
``k`` places later for k = 1, 2, ... until no equal neighbours remain (so the cost is n times the largest bucket).

Embedding pairs: rows are L2-normalised and multiplied block by block (``EMBEDDING_BLOCK_ROWS`` rows against every
later row), so memory stays at one block of similarities; the work is still n^2 / 2 dot products.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from orchestrator.duplicates.phash import HASH_BITS

DEFAULT_MAX_DISTANCE = 8
MAX_DISTANCE_LIMIT = 12  # beyond this, bands of 4 bits make buckets of n / 16 and the search slow
DEFAULT_MIN_COSINE = 0.95
# Below this many hashes, comparing every pair (n^2 / 2 XORs) is cheaper than sorting nine bands.
BRUTE_FORCE_MAX = 2048
EMBEDDING_BLOCK_ROWS = 1024

IntArray = NDArray[np.int64]
HashArray = NDArray[np.uint64]
FloatArray = NDArray[np.float32]


@dataclass(frozen=True)
class Pairs:
    """Matching pairs as parallel arrays: item ``a[k] < b[k]`` and their measure (distance or cosine)."""

    a: IntArray
    b: IntArray
    value: NDArray[np.float64]

    @classmethod
    def empty(cls) -> Pairs:
        """No pairs."""
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))

    def __len__(self) -> int:
        return int(self.a.size)


@dataclass(frozen=True)
class Link:
    """Why two items are in one group: their hash distance (bits) and/or embedding cosine, None where unmeasured."""

    a: int
    b: int
    phash_distance: int | None
    cosine: float | None


@dataclass(frozen=True)
class Group:
    """Items found to be near-duplicates of each other, ascending, and the links that joined them (a spanning tree
    of the strongest links: ``len(links) == len(members) - 1``)."""

    members: tuple[int, ...]
    links: tuple[Link, ...]


def group_key(member_ids: Iterable[uuid.UUID]) -> str:
    """A group's identity: sha256 of its sorted member ids; it changes when a member joins or leaves."""
    joined = ",".join(sorted(str(member) for member in member_ids))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()


def bands(max_distance: int) -> list[tuple[int, int]]:
    """``(shift, width)`` of ``max_distance + 1`` bands covering the 64 bits as evenly as possible."""
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be within 0..{HASH_BITS - 1}")
    count = max_distance + 1
    widths = [HASH_BITS // count + (1 if i < HASH_BITS % count else 0) for i in range(count)]
    shifts = [sum(widths[:i]) for i in range(count)]
    return list(zip(shifts, widths, strict=True))


def _popcount(values: HashArray) -> NDArray[np.int64]:
    return np.bitwise_count(values).astype(np.int64)


def hash_pairs_brute_force(hashes: HashArray, *, max_distance: int) -> Pairs:
    """Every pair at most ``max_distance`` bits apart, by comparing all pairs (for small sets and as a reference)."""
    n = hashes.size
    found_a, found_b, found_d = [], [], []
    for i in range(n - 1):
        distances = _popcount(hashes[i + 1 :] ^ hashes[i])
        close = np.nonzero(distances <= max_distance)[0]
        found_a.append(np.full(close.size, i, np.int64))
        found_b.append(close + i + 1)
        found_d.append(distances[close])
    if not found_a:
        return Pairs.empty()
    return Pairs(np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_d).astype(np.float64))


def hash_pairs(hashes: HashArray, *, max_distance: int) -> Pairs:
    """Every pair of hashes at most ``max_distance`` bits apart, each once with ``a < b`` (multi-index hashing)."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    if hashes.size <= BRUTE_FORCE_MAX:
        return hash_pairs_brute_force(hashes, max_distance=max_distance)
    n = hashes.size
    codes: list[NDArray[np.int64]] = []
    for shift, width in bands(max_distance):
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable").astype(np.int64)
        sorted_keys = keys[order]
        offset = 1
        while offset < n:
            same = sorted_keys[:-offset] == sorted_keys[offset:]
            if not same.any():
                break  # sorted: no equal values k apart means none further apart either
            left, right = order[:-offset][same], order[offset:][same]
            close = _popcount(hashes[left] ^ hashes[right]) <= max_distance
            low, high = np.minimum(left[close], right[close]), np.maximum(left[close], right[close])
            codes.append(low * n + high)
            offset += 1
    if not codes:
        return Pairs.empty()
    unique = np.unique(np.concatenate(codes))
    a, b = unique // n, unique % n
    return Pairs(a, b, _popcount(hashes[a] ^ hashes[b]).astype(np.float64))


def embedding_pairs(vectors: FloatArray, *, min_cosine: float, block_rows: int = EMBEDDING_BLOCK_ROWS) -> Pairs:
    """Every pair of rows with cosine similarity at least ``min_cosine``, each once with ``a < b``.

    Rows are normalised here; an all-zero row matches nothing.
    """
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        return Pairs.empty()
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    found_a, found_b, found_c = [], [], []
    for start in range(0, matrix.shape[0], block_rows):
        block = matrix[start : start + block_rows]
        similarity = block @ matrix[start:].T
        rows, cols = np.nonzero(similarity >= min_cosine)
        later = cols > rows  # the block's own diagonal and the pairs below it are not new
        found_a.append(rows[later].astype(np.int64) + start)
        found_b.append(cols[later].astype(np.int64) + start)
        found_c.append(similarity[rows[later], cols[later]].astype(np.float64))
    return Pairs(np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_c))


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        root = item
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while item != root:  # path compression keeps later finds near O(1)
            self.parent[item], item = root, self.parent.get(item, item)
        return root

    def union(self, a: int, b: int) -> bool:
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return False
        self.parent[max(root_a, root_b)] = min(root_a, root_b)
        return True


def join(links: Iterable[Link]) -> list[Group]:
    """Groups of the items connected by ``links`` (transitively), largest first, then by their first member.

    The strongest links (fewest differing bits, then highest cosine) are kept as each group's spanning tree.
    """

    def strength(link: Link) -> tuple[int, float]:
        distance = link.phash_distance if link.phash_distance is not None else HASH_BITS
        return distance, -(link.cosine if link.cosine is not None else -1.0)

    sets = _UnionFind()
    tree: list[Link] = []
    seen: set[int] = set()
    for link in sorted(links, key=strength):
        if link.a != link.b and sets.union(link.a, link.b):
            tree.append(link)
            seen.update((link.a, link.b))
    members: dict[int, list[int]] = {}
    for item in seen:
        members.setdefault(sets.find(item), []).append(item)
    links_of: dict[int, list[Link]] = {}
    for link in tree:
        links_of.setdefault(sets.find(link.a), []).append(link)
    groups = [Group(tuple(sorted(items)), tuple(links_of[root])) for root, items in members.items()]
    groups.sort(key=lambda group: (-len(group.members), group.members[0]))
    return groups


def near_groups(
    *,
    hash_items: IntArray,
    hashes: HashArray,
    embedding_items: IntArray,
    embeddings: FloatArray,
    max_distance: int | None = DEFAULT_MAX_DISTANCE,
    min_cosine: float | None = DEFAULT_MIN_COSINE,
) -> list[Group]:
    """Near-duplicate groups of items known by their hashes and/or embeddings.

    ``hash_items[k]`` is the item whose hash is ``hashes[k]``; ``embedding_items[k]`` the item of row k of
    ``embeddings``. ``None`` turns a criterion off. An item is never paired with itself.
    """
    found: dict[tuple[int, int], Link] = {}
    if max_distance is not None and hashes.size > 1:
        pairs = hash_pairs(hashes, max_distance=max_distance)
        items_a, items_b = hash_items[pairs.a].tolist(), hash_items[pairs.b].tolist()
        for a, b, d in zip(items_a, items_b, pairs.value.tolist(), strict=True):
            if a != b:
                found[min(a, b), max(a, b)] = Link(min(a, b), max(a, b), int(d), None)
    if min_cosine is not None and embeddings.shape[0] > 1:
        pairs = embedding_pairs(embeddings, min_cosine=min_cosine)
        for a, b, c in zip(
            embedding_items[pairs.a].tolist(), embedding_items[pairs.b].tolist(), pairs.value.tolist(), strict=True
        ):
            if a == b:
                continue
            key = (min(a, b), max(a, b))
            known = found.get(key)
            found[key] = Link(key[0], key[1], known.phash_distance if known else None, round(float(c), 4))
    return join(found.values())


def equal_groups(keys: Sequence[str | None]) -> list[list[int]]:
    """Indices of items that share a key (None never matches), groups of two or more, largest first."""
    by_key: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        if key is not None:
            by_key.setdefault(key, []).append(index)
    groups = [items for items in by_key.values() if len(items) > 1]
    groups.sort(key=lambda items: (-len(items), items[0]))
    return groups
