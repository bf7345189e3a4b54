"""Similarity queries for a tenant: assets like an asset, or like a vector (a text's CLIP embedding), as cards.

The backend is chosen per query: pgvector when the database has the vector table, else the exact in-memory index.
Only embeddings of one analyzer (``clip``) and one model are ever compared: vectors of different models do not
share a space.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.db.models import Asset, Embedding
from orchestrator.gallery import GalleryItem
from orchestrator.gallery import _items as gallery_items
from orchestrator.jobs import get_asset
from orchestrator.similarity import pgvector
from orchestrator.similarity.errors import ModelMismatchError, NoEmbeddingError
from orchestrator.similarity.exact import matrices, top_k

if TYPE_CHECKING:
    from orchestrator.similarity.text_encoder import TextSource

ANALYZER = "clip"
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class SimilarityBackend(StrEnum):
    """Which index answered a query."""

    EXACT = "exact"
    PGVECTOR = "pgvector"


@dataclass(frozen=True)
class SimilarItem:
    """An asset as a gallery card, with its cosine similarity to the query (1 is the same direction)."""

    item: GalleryItem
    similarity: float


@dataclass(frozen=True)
class SimilarResult:
    """The most similar assets, best first, the model whose space they were compared in, and the backend used."""

    items: list[SimilarItem]
    model_id: str | None
    backend: SimilarityBackend


def backend_for(session: Session) -> SimilarityBackend:
    """pgvector when this database has the vector table, else the exact in-memory index."""
    return SimilarityBackend.PGVECTOR if pgvector.vector_table_ready(session) else SimilarityBackend.EXACT


def stored_models(session: Session, *, tenant_id: uuid.UUID) -> list[tuple[str, int, int]]:
    """The (model_id, dim, count) of the tenant's CLIP embeddings, most embeddings first."""
    count = func.count().label("n")
    rows = session.execute(
        select(Embedding.model_id, Embedding.dim, count)
        .where(Embedding.tenant_id == tenant_id, Embedding.analyzer == ANALYZER)
        .group_by(Embedding.model_id, Embedding.dim)
        .order_by(count.desc(), Embedding.model_id)
    ).all()
    return [(model_id, int(dim), int(n)) for model_id, dim, n in rows]


def similar_to_asset(
    session: Session, *, tenant_id: uuid.UUID, asset_id: uuid.UUID, limit: int = DEFAULT_LIMIT
) -> SimilarResult:
    """The tenant's assets most like ``asset_id`` (itself left out).

    NotFoundError for another tenant's (or no) asset; NoEmbeddingError when the asset has no CLIP embedding.
    """
    asset = get_asset(session, tenant_id=tenant_id, asset_id=asset_id)
    embedding = session.scalar(select(Embedding).where(Embedding.asset_id == asset.id, Embedding.analyzer == ANALYZER))
    if embedding is None or len(embedding.vector) != 4 * embedding.dim:
        raise NoEmbeddingError(
            "this asset has no image embedding to compare with: it was not analyzed with clip, or is not done yet"
        )
    vector = np.frombuffer(embedding.vector, dtype="<f4").astype(np.float32)
    return _search(
        session, tenant_id=tenant_id, model_id=embedding.model_id, query=vector, limit=limit, exclude=asset.id
    )


def similar_to_vector(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    vector: Sequence[float] | np.ndarray,
    model_id: str,
    limit: int = DEFAULT_LIMIT,
) -> SimilarResult:
    """The tenant's assets whose CLIP embedding is most like ``vector``, an embedding from the model ``model_id``.

    ModelMismatchError when the tenant's pictures were embedded by another model or with another length.
    """
    query = np.asarray(vector, dtype=np.float32)
    if query.ndim != 1 or query.size == 0 or not np.isfinite(query).all() or not np.any(query):
        raise ModelMismatchError("the query vector must be a non-zero list of finite numbers")
    # One indexed probe, not a scan of the tenant's embeddings: this runs on every query.
    dim = session.scalar(
        select(Embedding.dim)
        .where(Embedding.tenant_id == tenant_id, Embedding.analyzer == ANALYZER, Embedding.model_id == model_id)
        .limit(1)
    )
    if dim is None:
        models = stored_models(session, tenant_id=tenant_id)
        if not models:
            return SimilarResult(items=[], model_id=model_id, backend=backend_for(session))
        stored = ", ".join(stored for stored, _, _ in models)
        raise ModelMismatchError(
            f"the query was embedded by {model_id!r}, but this library's pictures by {stored}; "
            "use a worker with the same CLIP model"
        )
    if query.size != dim:
        raise ModelMismatchError(f"the query has {query.size} values; {model_id!r} embeddings have {dim}")
    return _search(session, tenant_id=tenant_id, model_id=model_id, query=query, limit=limit, exclude=None)


def _search(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    model_id: str,
    query: np.ndarray,
    limit: int,
    exclude: uuid.UUID | None,
) -> SimilarResult:
    limit = max(1, min(limit, MAX_LIMIT))
    backend = backend_for(session)
    ranked: list[tuple[uuid.UUID, float]]
    if backend is SimilarityBackend.PGVECTOR:
        hits = pgvector.nearest(
            session,
            tenant_id=tenant_id,
            analyzer=ANALYZER,
            model_id=model_id,
            query=query,
            limit=limit,
            exclude=exclude,
        )
        ranked = [(hit.asset_id, hit.score) for hit in hits]
    else:
        matrix = matrices.get(session, tenant_id=tenant_id, analyzer=ANALYZER, model_id=model_id)
        if matrix.asset_ids and matrix.dim != query.size:
            raise ModelMismatchError(f"the query has {query.size} values; the stored embeddings have {matrix.dim}")
        own = matrix.row_of(exclude) if exclude is not None else None
        found = top_k(matrix.matrix, query, limit, exclude=() if own is None else (own,))
        ranked = [(matrix.asset_ids[hit.row], hit.score) for hit in found]
    return SimilarResult(items=_cards(session, tenant_id=tenant_id, ranked=ranked), model_id=model_id, backend=backend)


def _cards(session: Session, *, tenant_id: uuid.UUID, ranked: list[tuple[uuid.UUID, float]]) -> list[SimilarItem]:
    ids = [asset_id for asset_id, _ in ranked]
    if not ids:
        return []
    found = {a.id: a for a in session.scalars(select(Asset).where(Asset.tenant_id == tenant_id, Asset.id.in_(ids)))}
    assets = [found[asset_id] for asset_id in ids if asset_id in found]
    cards = {card.id: card for card in gallery_items(session, tenant_id=tenant_id, assets=assets)}
    return [
        SimilarItem(item=cards[asset_id], similarity=round(min(1.0, max(-1.0, score)), 4))
        for asset_id, score in ranked
        if asset_id in cards
    ]


def similar_to_text(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    text: str,
    limit: int = DEFAULT_LIMIT,
    sources: Sequence[TextSource] | None = None,
) -> SimilarResult:
    """The tenant's pictures that best match ``text``, through the text's CLIP embedding from a worker.

    The text is embedded by the model that embedded the tenant's latest picture. ValueError for a blank or too
    long text; TextEncoderUnavailableError when no worker can embed it now; ModelMismatchError when the workers
    that answered have another model.
    """
    from orchestrator.similarity.text_encoder import sources_for, text_encoder

    model_id = session.scalar(
        select(Embedding.model_id)
        .where(Embedding.tenant_id == tenant_id, Embedding.analyzer == ANALYZER)
        .order_by(Embedding.id.desc())
        .limit(1)
    )
    if model_id is None:
        return SimilarResult(items=[], model_id=None, backend=backend_for(session))
    if sources is None:
        sources = sources_for(session, tenant_id=tenant_id)
    vector = text_encoder.encode(text, model_id=model_id, sources=sources)
    return similar_to_vector(session, tenant_id=tenant_id, vector=vector, model_id=model_id, limit=limit)
