"""Search: the tenant's assets that match a query in the search language (docs/search.md), best first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from orchestrator.api.deps import SessionDep, TenantDep
from orchestrator.api.error_responses import TENANT_ERRORS
from orchestrator.api.presenters import gallery_public
from orchestrator.api.schemas import GalleryItemPublic
from orchestrator.gallery import GalleryPage
from orchestrator.search.engine import MAX_OFFSET, MAX_PAGE_SIZE, PAGE_SIZE, RankedBy, SearchPage, search
from orchestrator.search.query import MAX_QUERY_CHARS

router = APIRouter(prefix="/search", tags=["search"], responses=TENANT_ERRORS)


class SearchHitPublic(GalleryItemPublic):
    """An asset found, as the gallery lists it, with its rank score (null when ordered newest first)."""

    score: float | None


class SearchPublic(BaseModel):
    """One page of search results, best first, with the total count of matching assets."""

    data: list[SearchHitPublic]
    count: int
    offset: int
    limit: int
    next_offset: int | None
    ranked_by: RankedBy


def search_public(page: SearchPage) -> SearchPublic:
    """A search page for the REST API."""
    cards = gallery_public(
        GalleryPage(items=[hit.item for hit in page.hits], total=page.total, older=None, newer=None, limit=page.limit)
    ).data
    return SearchPublic(
        data=[
            SearchHitPublic(**card.model_dump(), score=hit.score) for card, hit in zip(cards, page.hits, strict=True)
        ],
        count=page.total,
        offset=page.offset,
        limit=page.limit,
        next_offset=page.next_offset,
        ranked_by=page.ranked_by,
    )


@router.get("")
def search_assets(
    session: SessionDep,
    tenant: TenantDep,
    q: Annotated[str, Query(max_length=MAX_QUERY_CHARS, description="a query; empty lists every asset")] = "",
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
) -> SearchPublic:
    """The tenant's assets that match ``q``, best first: by full-text relevance plus matched tag scores when the
    query has words, by matched tag scores when it has only tags, else newest first. A query that does not parse
    answers 422 with code ``invalid_query`` and the character where the problem is."""
    return search_public(search(session, tenant_id=tenant.id, query=q, offset=offset, limit=limit))
