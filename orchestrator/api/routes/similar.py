"""Similarity: assets like an asset ("more like this"), and pictures that match a text (through its CLIP embedding)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from gpu_worker.text_embedding import MAX_TEXT_CHARS
from orchestrator.api.deps import SessionDep, TenantDep
from orchestrator.api.error_responses import TENANT_ERRORS, error_responses
from orchestrator.api.presenters import gallery_public
from orchestrator.api.schemas import GalleryItemPublic
from orchestrator.gallery import GalleryPage
from orchestrator.similarity.service import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    SimilarResult,
    similar_to_asset,
    similar_to_text,
)

router = APIRouter(tags=["similarity"], responses=TENANT_ERRORS)


class SimilarItemPublic(GalleryItemPublic):
    """A gallery card with its cosine similarity to the query (1 is identical in direction)."""

    similarity: float


class SimilarPublic(BaseModel):
    """The most similar assets, best first; ``model_id`` is the embedding space compared in, ``backend`` the index."""

    data: list[SimilarItemPublic]
    count: int
    model_id: str | None
    backend: str


def similar_public(result: SimilarResult) -> SimilarPublic:
    """A similarity answer for the REST API: gallery cards plus similarity."""
    cards = gallery_public(
        GalleryPage(items=[s.item for s in result.items], total=len(result.items), older=None, newer=None, limit=0)
    ).data
    return SimilarPublic(
        data=[
            SimilarItemPublic(**card.model_dump(), similarity=s.similarity)
            for card, s in zip(cards, result.items, strict=True)
        ],
        count=len(result.items),
        model_id=result.model_id,
        backend=str(result.backend),
    )


@router.get("/assets/{asset_id}/similar", responses=error_responses(404, 409))
def assets_like(
    asset_id: uuid.UUID,
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> SimilarPublic:
    """The tenant's assets most like this one by their CLIP image embedding (the asset itself left out).

    409 ``no_embedding`` when the asset has no embedding (not analyzed with clip, or not done).
    """
    return similar_public(similar_to_asset(session, tenant_id=tenant.id, asset_id=asset_id, limit=limit))


@router.get("/similar", responses=error_responses(409, 503))
def pictures_matching(
    session: SessionDep,
    tenant: TenantDep,
    text: Annotated[str, Query(min_length=1, max_length=MAX_TEXT_CHARS, description="what the pictures show")],
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> SimilarPublic:
    """The tenant's pictures that best match ``text``: its CLIP text embedding, computed by a worker, against the
    pictures' embeddings. 503 ``text_encoder_unavailable`` when no worker can embed text now; 409
    ``model_mismatch`` when the workers have another CLIP model than the one that embedded the pictures."""
    if not text.strip():
        raise RequestValidationError([{"loc": ("query", "text"), "msg": "the text is blank", "type": "value_error"}])
    return similar_public(similar_to_text(session, tenant_id=tenant.id, text=text, limit=limit))
