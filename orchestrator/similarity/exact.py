"""Exact cosine top-k over a tenant's embeddings of one analyzer and model, with numpy, cached per process.

The matrix of a (tenant, analyzer, model) is read once and kept in memory as float32 rows of unit length; a query is
one matrix-vector product and an ``argpartition``. Before each query a cheap aggregate (row count and highest
embedding id) tells whether the rows changed: results are replaced by deleting and inserting rows, so any write
moves one of the two, and a stale matrix is reloaded. The cache is bounded in bytes and forgets the least recently
used matrix first. Used on SQLite and on PostgreSQL without pgvector.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.db.models import Embedding

# 100,000 CLIP ViT-B/32 embeddings are 205 MB as float32; this keeps about three such tenants in memory.
MAX_CACHE_BYTES = 640 * 1024**2
FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Hit:
    """One ranked neighbour: its row in the matrix and the cosine similarity to the query."""

    row: int
    score: float


def unit_rows(matrix: FloatMatrix) -> FloatMatrix:
    """The rows scaled to unit length (all-zero rows stay zero), as float32."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    scaled: FloatMatrix = (matrix / norms).astype(np.float32, copy=False)
    return scaled


def top_k(matrix: FloatMatrix, query: FloatMatrix, k: int, *, exclude: Sequence[int] = ()) -> list[Hit]:
    """The ``k`` rows of ``matrix`` (unit rows) most similar by cosine to ``query``, best first.

    Rows in ``exclude`` are never returned. Equal scores are ordered by row, so the answer is deterministic.
    """
    if matrix.shape[0] == 0 or k < 1:
        return []
    norm = float(np.linalg.norm(query))
    if norm == 0.0 or not np.isfinite(norm):
        raise ValueError("the query vector is zero or not finite")
    scores = matrix @ (query.astype(np.float32) / norm)
    if exclude:
        scores[np.asarray(list(exclude), dtype=np.intp)] = -np.inf
    k = min(k, matrix.shape[0] - len(set(exclude)))
    if k < 1:
        return []
    candidates = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    order = np.lexsort((candidates, -scores[candidates]))
    return [Hit(row=int(candidates[i]), score=float(scores[candidates[i]])) for i in order]


@dataclass(frozen=True)
class EmbeddingMatrix:
    """A tenant's embeddings of one analyzer and model: unit float32 rows and the asset of each row."""

    asset_ids: list[uuid.UUID]
    matrix: FloatMatrix
    version: tuple[int, int]
    rows: dict[uuid.UUID, int] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Length of each row."""
        return int(self.matrix.shape[1])

    def row_of(self, asset_id: uuid.UUID) -> int | None:
        """The row of an asset, or None when it has no embedding here."""
        return self.rows.get(asset_id)


CacheKey = tuple[uuid.UUID, str, str]


class MatrixCache:
    """Per-process matrices by (tenant, analyzer, model), reloaded when their rows changed, bounded in bytes."""

    def __init__(self, max_bytes: int = MAX_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._loading: dict[CacheKey, threading.Lock] = {}
        self._entries: OrderedDict[CacheKey, EmbeddingMatrix] = OrderedDict()
        self.loads = 0

    def clear(self) -> None:
        """Forget every matrix."""
        with self._lock:
            self._entries.clear()

    def get(self, session: Session, *, tenant_id: uuid.UUID, analyzer: str, model_id: str) -> EmbeddingMatrix:
        """The current matrix, loaded only when the stored rows changed since it was read."""
        key = (tenant_id, analyzer, model_id)
        version = embeddings_version(session, tenant_id=tenant_id, analyzer=analyzer, model_id=model_id)
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and cached.version == version:
                self._entries.move_to_end(key)
                return cached
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one load per key at a time; the others wait for it instead of loading too
            with self._lock:
                cached = self._entries.get(key)
            if cached is not None and cached.version == version:
                return cached
            loaded = load_matrix(session, tenant_id=tenant_id, analyzer=analyzer, model_id=model_id, version=version)
            with self._lock:
                self.loads += 1
                self._entries[key] = loaded
                self._entries.move_to_end(key)
                self._evict()
            return loaded

    def _evict(self) -> None:
        total = sum(entry.matrix.nbytes for entry in self._entries.values())
        while len(self._entries) > 1 and total > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            total -= dropped.matrix.nbytes


def embeddings_version(session: Session, *, tenant_id: uuid.UUID, analyzer: str, model_id: str) -> tuple[int, int]:
    """(row count, highest id) of all the tenant's embeddings: changes with every write.

    Counted over the tenant alone, not per analyzer and model: that reads only the tenant index (on SQLite, whose
    index entries carry the id, without touching a row), where filtering on the other columns read every row
    (300 ms instead of a few at 100,000 embeddings in bench/similarity.py). A write of another model's rows then
    reloads this matrix too, which is rare.
    """
    count, highest = session.execute(
        select(func.count(), func.max(Embedding.id)).where(Embedding.tenant_id == tenant_id)
    ).one()
    return int(count or 0), int(highest or 0)


def load_matrix(
    session: Session, *, tenant_id: uuid.UUID, analyzer: str, model_id: str, version: tuple[int, int]
) -> EmbeddingMatrix:
    """Read the rows into one float32 matrix. Rows of another length than the most common one are left out."""
    rows = session.execute(
        select(Embedding.asset_id, Embedding.dim, Embedding.vector)
        .where(Embedding.tenant_id == tenant_id, Embedding.analyzer == analyzer, Embedding.model_id == model_id)
        .order_by(Embedding.id)
    ).all()
    dims = [dim for _, dim, _ in rows]
    dim = max(set(dims), key=dims.count) if dims else 0
    kept = [(asset_id, blob) for asset_id, row_dim, blob in rows if row_dim == dim and len(blob) == 4 * dim]
    if not kept:
        return EmbeddingMatrix(asset_ids=[], matrix=np.zeros((0, dim), dtype=np.float32), version=version)
    flat = np.frombuffer(b"".join(blob for _, blob in kept), dtype="<f4").astype(np.float32)
    matrix = unit_rows(flat.reshape(len(kept), dim))
    asset_ids = [asset_id for asset_id, _ in kept]
    return EmbeddingMatrix(
        asset_ids=asset_ids, matrix=matrix, version=version, rows={a: i for i, a in enumerate(asset_ids)}
    )


matrices = MatrixCache()
