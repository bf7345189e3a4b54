"""How long grouping near-duplicates takes at library scale: perceptual hashes and CLIP-sized embeddings.

Generates ``--hashes`` random 64-bit hashes (default 100,000) with planted near-duplicates (copies of some hashes
with 0 to ``--distance`` bits flipped), groups them with the banded search and checks that every planted copy was
found; compares with comparing every pair on a subset. Then ``--embeddings`` random 512-d vectors (default 20,000)
with planted close copies, grouped by cosine similarity with the blocked matrix product.

    python bench/duplicates.py
    python bench/duplicates.py --hashes 20000 --embeddings 5000   # a quick look

Prints figures only; nothing here is an assertion about time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from orchestrator.duplicates.groups import (  # noqa: E402
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_COSINE,
    embedding_pairs,
    hash_pairs,
    hash_pairs_brute_force,
    near_groups,
)

EMBEDDING_DIM = 512


def planted_hashes(n: int, planted: int, max_distance: int, seed: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Random hashes where the last ``planted`` are copies of the first ones, 0..max_distance bits away."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    pairs = []
    for k in range(planted):
        copy = int(hashes[k])
        for bit in rng.choice(64, size=k % (max_distance + 1), replace=False):
            copy ^= 1 << int(bit)
        hashes[n - 1 - k] = copy
        pairs.append((k, n - 1 - k))
    return hashes, pairs


def timed(label: str, run: object) -> object:
    start = time.perf_counter()
    result = run()  # type: ignore[operator]
    print(f"{label}: {time.perf_counter() - start:.2f} s")
    return result


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hashes", type=int, default=100_000)
    parser.add_argument("--embeddings", type=int, default=20_000)
    parser.add_argument("--planted", type=int, default=200)
    parser.add_argument("--distance", type=int, default=DEFAULT_MAX_DISTANCE)
    parser.add_argument("--brute-subset", type=int, default=20_000, help="hashes compared pair by pair")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, numpy {np.__version__}")

    hashes, planted = planted_hashes(args.hashes, args.planted, args.distance, seed=1)
    found = timed(
        f"hash pairs, {args.hashes:,} hashes, distance <= {args.distance} (banded)",
        lambda: hash_pairs(hashes, max_distance=args.distance),
    )
    pairs = set(zip(found.a.tolist(), found.b.tolist(), strict=True))  # type: ignore[attr-defined]
    missed = [p for p in planted if p not in pairs]
    print(f"  {len(pairs):,} pairs found; planted {len(planted)}, missed {len(missed)}")
    groups = timed(
        "hash search and union-find grouping, same hashes",
        lambda: near_groups(
            hash_items=np.arange(hashes.size, dtype=np.int64),
            hashes=hashes,
            embedding_items=np.empty(0, np.int64),
            embeddings=np.empty((0, 0), np.float32),
            max_distance=args.distance,
            min_cosine=None,
        ),
    )
    print(f"  {len(groups):,} groups")  # type: ignore[arg-type]

    subset = hashes[: args.brute_subset]
    banded = timed(
        f"hash pairs, {subset.size:,} hashes (banded)", lambda: hash_pairs(subset, max_distance=args.distance)
    )
    brute = timed(
        f"hash pairs, {subset.size:,} hashes (every pair)",
        lambda: hash_pairs_brute_force(subset, max_distance=args.distance),
    )
    same = set(zip(banded.a.tolist(), banded.b.tolist(), strict=True)) == set(  # type: ignore[attr-defined]
        zip(brute.a.tolist(), brute.b.tolist(), strict=True)  # type: ignore[attr-defined]
    )
    print(f"  same pairs: {same}")

    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((args.embeddings, EMBEDDING_DIM)).astype(np.float32)
    close = min(args.planted, args.embeddings // 2)
    vectors[-close:] = vectors[:close] + 0.1 * rng.standard_normal((close, EMBEDDING_DIM)).astype(np.float32)
    cosine = timed(
        f"embedding pairs, {args.embeddings:,} x {EMBEDDING_DIM}, cosine >= {DEFAULT_MIN_COSINE} (blocked)",
        lambda: embedding_pairs(vectors, min_cosine=DEFAULT_MIN_COSINE),
    )
    got = set(zip(cosine.a.tolist(), cosine.b.tolist(), strict=True))  # type: ignore[attr-defined]
    expected = {(k, args.embeddings - close + k) for k in range(close)}
    print(f"  {len(got):,} pairs found; planted {close}, missed {len(expected - got)}")


if __name__ == "__main__":
    main()
