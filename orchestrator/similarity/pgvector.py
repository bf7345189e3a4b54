"""Similarity through PostgreSQL's ``vector`` extension (pgvector), when the database has it.

Migration 0010 creates the side table ``vec_embeddings`` (one row per ``embeddings`` row, deleted with it by the
foreign key) only where the extension can be installed; :func:`vector_table_ready` tells at run time. Rows are added
in the transaction that writes the embeddings (:func:`sync_assets`, from ``orchestrator.indexing``).

The column is an untyped ``vector`` so that models of any width share the table; HNSW indexes need a fixed width,
so there is one partial expression index per common CLIP width (``HNSW_DIMS``). A query casts to that width so the
planner can walk the graph, with pgvector's iterative scan (0.8+) so that the tenant filter still yields ``k`` rows;
other widths, and small tenants where the planner prefers the tenant index, are ranked exactly.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

VECTOR_TABLE = "vec_embeddings"
# CLIP ViT-B/32 and ViT-B/16 embed in 512 values, ViT-L/14 in 768.
HNSW_DIMS = (512, 768)
SYNC_CHUNK_ROWS = 1000
# Candidates the HNSW walk keeps (pgvector's default is 40); at least twice the page asked for.
MIN_EF_SEARCH = 100


@dataclass(frozen=True)
class VectorHit:
    """An asset and its cosine similarity to the query."""

    asset_id: uuid.UUID
    score: float


def vector_table_ready(session: Session) -> bool:
    """Whether this database is PostgreSQL with the ``vec_embeddings`` table (and so the extension) in place."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    return session.execute(text("SELECT to_regclass('vec_embeddings') IS NOT NULL")).scalar_one() is True


def vector_literal(values: Iterable[float]) -> str:
    """pgvector's text form of a vector, ``[0.1,0.2,...]``, with float32 precision."""
    parts = []
    for value in values:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("a vector value is not finite")
        parts.append(f"{number:.9g}")
    return "[" + ",".join(parts) + "]"


def search_sql(dim: int) -> str:
    """The nearest-neighbour query for vectors of width ``dim``: through an HNSW index when one exists for it."""
    if dim in HNSW_DIMS:  # only these integers reach the SQL text; every value is a bound parameter
        column, query = f"(v::vector({int(dim)}))", f"CAST(:query AS vector({int(dim)}))"
    else:
        column, query = "v", "CAST(:query AS vector)"
    return (
        f"SELECT asset_id, 1 - ({column} <=> {query}) AS score FROM vec_embeddings "  # noqa: S608
        "WHERE tenant_id = :tenant_id AND analyzer = :analyzer AND model_id = :model_id AND dim = :dim "
        "AND asset_id <> :exclude "
        f"ORDER BY {column} <=> {query} LIMIT :limit"
    )


def _tune(session: Session, *, limit: int) -> None:
    """Per transaction: a wider HNSW walk, and (pgvector 0.8+) iterative scans so filters cannot starve a page."""
    version = session.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
    session.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(max(MIN_EF_SEARCH, 2 * limit))})
    if version is not None and tuple(int(p) for p in str(version).split(".")[:2]) >= (0, 8):
        session.execute(text("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)"))


def nearest(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    analyzer: str,
    model_id: str,
    query: Sequence[float] | np.ndarray,
    limit: int,
    exclude: uuid.UUID | None = None,
) -> list[VectorHit]:
    """The ``limit`` assets of the tenant nearest to ``query`` by cosine, best first (``exclude`` left out)."""
    values = np.asarray(query, dtype=np.float32)
    _tune(session, limit=limit)
    rows = session.execute(
        text(search_sql(len(values))),
        {
            "query": vector_literal(values),
            "tenant_id": tenant_id,
            "analyzer": analyzer,
            "model_id": model_id,
            "dim": len(values),
            "exclude": exclude or uuid.UUID(int=0),
            "limit": limit,
        },
    ).all()
    # The iterative scan may hand rows back slightly out of order ("relaxed"): order them exactly here.
    hits = [VectorHit(asset_id=asset_id, score=float(score)) for asset_id, score in rows]
    return sorted(hits, key=lambda hit: (-hit.score, str(hit.asset_id)))


INSERT_SQL = text(
    "INSERT INTO vec_embeddings (embedding_id, tenant_id, asset_id, analyzer, model_id, dim, v) "
    "VALUES (:embedding_id, :tenant_id, :asset_id, :analyzer, :model_id, :dim, CAST(:v AS vector)) "
    "ON CONFLICT (embedding_id) DO NOTHING"
)
MISSING_SQL = (
    "SELECT e.id, e.tenant_id, e.asset_id, e.analyzer, e.model_id, e.dim, e.vector FROM embeddings e "
    "LEFT JOIN vec_embeddings x ON x.embedding_id = e.id WHERE x.embedding_id IS NULL AND e.tenant_id = :tenant_id"
)


def _copy(session: Session, rows: Sequence[tuple[object, ...]]) -> int:
    params = []
    for embedding_id, tenant_id, asset_id, analyzer, model_id, dim, blob in rows:
        vector = np.frombuffer(bytes(blob), dtype="<f4")  # type: ignore[call-overload]
        if len(vector) != dim or not np.isfinite(vector).all():
            continue
        params.append(
            {
                "embedding_id": embedding_id,
                "tenant_id": tenant_id,
                "asset_id": asset_id,
                "analyzer": analyzer,
                "model_id": model_id,
                "dim": dim,
                "v": vector_literal(vector.tolist()),
            }
        )
    for start in range(0, len(params), SYNC_CHUNK_ROWS):
        session.execute(INSERT_SQL, params[start : start + SYNC_CHUNK_ROWS])
    return len(params)


def sync_assets(session: Session, *, tenant_id: uuid.UUID, asset_ids: Sequence[uuid.UUID]) -> int:
    """Copy these assets' embeddings that the vector table lacks; a no-op without pgvector. Returns rows added.

    Replaced embeddings need nothing here: their old rows went with them (ON DELETE CASCADE).
    """
    if not asset_ids or not vector_table_ready(session):
        return 0
    session.flush()  # the caller's new embeddings, added through the ORM, must be visible to the SQL below
    rows = session.execute(
        text(MISSING_SQL + " AND e.asset_id = ANY(:asset_ids)"), {"tenant_id": tenant_id, "asset_ids": list(asset_ids)}
    ).all()
    return _copy(session, [tuple(row) for row in rows])


def sync_tenant(session: Session, *, tenant_id: uuid.UUID) -> int:
    """Copy every embedding of the tenant that the vector table lacks; a no-op without pgvector. Returns rows added."""
    if not vector_table_ready(session):
        return 0
    rows = session.execute(text(MISSING_SQL), {"tenant_id": tenant_id}).all()
    return _copy(session, [tuple(row) for row in rows])
