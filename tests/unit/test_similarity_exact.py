"""The exact cosine top-k: the same ranking as a full sort, the excluded row never returned, ties in row order,
and the text-embedding exchange's limits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydantic import ValidationError

from gpu_worker.text_embedding import MAX_TEXT_CHARS, MAX_TEXTS, TextEmbeddings, TextEmbedRequest
from orchestrator.similarity.exact import top_k, unit_rows
from orchestrator.similarity.pgvector import HNSW_DIMS, search_sql, vector_literal


def _brute_force(matrix: np.ndarray, query: np.ndarray, k: int, exclude: set[int]) -> list[int]:
    scores = unit_rows(matrix) @ (query / np.linalg.norm(query))
    order = sorted((i for i in range(len(scores)) if i not in exclude), key=lambda i: (-scores[i], i))
    return order[:k]


@pytest.mark.parametrize(("rows", "dim", "k"), [(1, 4, 5), (50, 8, 1), (1000, 32, 20), (5000, 512, 20), (30, 16, 30)])
def test_top_k_ranks_like_a_full_sort(rows: int, dim: int, k: int) -> None:
    rng = np.random.default_rng(rows + dim)
    matrix = rng.normal(size=(rows, dim)).astype(np.float32)
    query = rng.normal(size=dim).astype(np.float32)

    hits = top_k(unit_rows(matrix), query, k)

    assert [h.row for h in hits] == _brute_force(matrix, query, k, set())
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    expected = unit_rows(matrix) @ (query / np.linalg.norm(query))
    assert [h.score for h in hits] == pytest.approx([float(expected[h.row]) for h in hits], abs=1e-6)


def test_the_excluded_row_is_never_returned_even_when_it_is_the_best() -> None:
    rng = np.random.default_rng(7)
    matrix = unit_rows(rng.normal(size=(100, 16)).astype(np.float32))

    hits = top_k(matrix, matrix[42], 10, exclude=(42,))

    assert 42 not in [h.row for h in hits] and len(hits) == 10
    assert [h.row for h in hits] == _brute_force(matrix, matrix[42], 10, {42})


def test_equal_scores_are_ordered_by_row_and_k_larger_than_the_rows_returns_them_all() -> None:
    matrix = unit_rows(np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32))

    hits = top_k(matrix, np.array([1, 0], dtype=np.float32), 10, exclude=(2,))

    assert [h.row for h in hits] == [0, 3, 1]
    assert [round(h.score, 6) for h in hits] == [1.0, 1.0, 0.0]


def test_an_empty_matrix_or_a_lone_excluded_row_gives_nothing_and_a_zero_query_is_refused() -> None:
    empty = np.zeros((0, 4), dtype=np.float32)
    one = unit_rows(np.ones((1, 4), dtype=np.float32))

    assert top_k(empty, np.ones(4, dtype=np.float32), 5) == []
    assert top_k(one, np.ones(4, dtype=np.float32), 5, exclude=(0,)) == []
    with pytest.raises(ValueError, match="zero"):
        top_k(one, np.zeros(4, dtype=np.float32), 5)


def test_unit_rows_scales_rows_to_length_one_and_keeps_zero_rows_zero() -> None:
    rows = unit_rows(np.array([[3, 4], [0, 0]], dtype=np.float32))

    assert rows.dtype == np.float32
    assert rows.tolist() == [[pytest.approx(0.6), pytest.approx(0.8)], [0.0, 0.0]]


def test_pgvector_queries_use_the_hnsw_width_cast_only_for_indexed_widths_and_bind_every_value() -> None:
    indexed = search_sql(HNSW_DIMS[0])
    other = search_sql(32)

    assert f"(v::vector({HNSW_DIMS[0]})) <=> CAST(:query AS vector({HNSW_DIMS[0]}))" in indexed
    assert "v <=> CAST(:query AS vector)" in other and "::vector(" not in other
    for sql in (indexed, other):
        assert ":tenant_id" in sql and ":model_id" in sql and ":exclude" in sql and sql.endswith("LIMIT :limit")
    assert vector_literal([0.5, -1.25e-8, 3]) == "[0.5,-1.25e-08,3]"
    with pytest.raises(ValueError, match="finite"):
        vector_literal([1.0, float("nan")])


def test_text_embedding_requests_are_bounded_and_answers_must_be_consistent() -> None:
    assert TextEmbedRequest(texts=["a red square"]).texts == ["a red square"]
    for texts in ([], ["x"] * (MAX_TEXTS + 1), ["x" * (MAX_TEXT_CHARS + 1)], ["  "]):
        with pytest.raises(ValidationError):
            TextEmbedRequest(texts=texts)
    with pytest.raises(ValidationError, match="dim"):
        TextEmbeddings(model_id="m", dim=3, embeddings=[[0.1, 0.2]])
    with pytest.raises(ValidationError, match="finite"):
        TextEmbeddings(model_id="m", dim=2, embeddings=[[0.1, float("inf")]])
