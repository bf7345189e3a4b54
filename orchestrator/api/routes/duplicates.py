"""Duplicates: the tenant's groups of exact copies (same bytes in several jobs) or near-duplicate pictures, and
marking a group as not duplicates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from orchestrator.api.deps import SessionDep, TenantDep
from orchestrator.api.error_responses import TENANT_ERRORS, error_responses
from orchestrator.api.paging import Offset
from orchestrator.api.presenters import card_public_fields
from orchestrator.api.schemas import AssetCardPublic
from orchestrator.duplicates.groups import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_COSINE, MAX_DISTANCE_LIMIT
from orchestrator.duplicates.service import (
    MAX_PAGE_SIZE,
    PAGE_SIZE,
    Criteria,
    DuplicateGroups,
    DuplicateKind,
    dismiss_group,
    duplicate_groups,
)

router = APIRouter(prefix="/duplicates", tags=["duplicates"], responses=TENANT_ERRORS)

KindQuery = Annotated[DuplicateKind, Query(description="exact: the same bytes; near: pictures that look the same")]
ThresholdQuery = Annotated[
    int, Query(ge=0, le=MAX_DISTANCE_LIMIT, description="near: most perceptual-hash bits (of 64) that may differ")
]
SimilarityQuery = Annotated[
    float, Query(ge=0.5, le=1.0, description="near: least cosine similarity of CLIP embeddings")
]
EmbeddingsQuery = Annotated[bool, Query(description="near: also compare CLIP embeddings (slower on big libraries)")]


class DuplicateItemPublic(AssetCardPublic):
    """A member of a group, as a gallery card shows it; ``reason`` says why it belongs (null for the first)."""

    reason: str | None


class DuplicateGroupPublic(BaseModel):
    """A group of duplicates, oldest first; POST its ``key`` to ``/duplicates/{key}/dismiss`` to hide it."""

    key: str
    kind: DuplicateKind
    reason: str
    size: int
    items: list[DuplicateItemPublic]


class DuplicateGroupsPublic(BaseModel):
    """A page of groups, largest first. ``count`` counts the groups shown; ``hidden`` those dismissed."""

    data: list[DuplicateGroupPublic]
    count: int
    hidden: int
    kind: DuplicateKind
    threshold: int | None
    similarity: float | None


class DismissedPublic(BaseModel):
    """A dismissed group's key; it stays hidden until its membership changes."""

    key: str
    dismissed: bool


def _criteria(kind: DuplicateKind, threshold: int, similarity: float, embeddings: bool) -> Criteria:
    return Criteria(kind=kind, max_distance=threshold, min_cosine=similarity if embeddings else None)


def duplicates_public(page: DuplicateGroups) -> DuplicateGroupsPublic:
    """A page of groups for the REST API."""
    near = page.criteria.kind == DuplicateKind.NEAR
    return DuplicateGroupsPublic(
        data=[
            DuplicateGroupPublic(
                key=group.key,
                kind=group.kind,
                reason=group.reason,
                size=len(group.items),
                items=[DuplicateItemPublic(**card_public_fields(item), reason=item.reason) for item in group.items],
            )
            for group in page.groups
        ],
        count=page.total,
        hidden=page.hidden,
        kind=page.criteria.kind,
        threshold=page.criteria.max_distance if near else None,
        similarity=page.criteria.min_cosine if near else None,
    )


@router.get("")
def list_duplicates(
    session: SessionDep,
    tenant: TenantDep,
    kind: KindQuery = DuplicateKind.EXACT,
    threshold: ThresholdQuery = DEFAULT_MAX_DISTANCE,
    similarity: SimilarityQuery = DEFAULT_MIN_COSINE,
    embeddings: EmbeddingsQuery = True,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
    offset: Offset = 0,
) -> DuplicateGroupsPublic:
    """The tenant's duplicate groups, largest first, without those marked as not duplicates."""
    page = duplicate_groups(
        session,
        tenant_id=tenant.id,
        criteria=_criteria(kind, threshold, similarity, embeddings),
        limit=limit,
        offset=offset,
    )
    return duplicates_public(page)


@router.post("/{group_key}/dismiss", responses=error_responses(404))
def dismiss_duplicates(
    group_key: str,
    session: SessionDep,
    tenant: TenantDep,
    kind: Annotated[
        DuplicateKind | None, Query(description="the kind the group was listed as; default: either")
    ] = None,
    threshold: ThresholdQuery = DEFAULT_MAX_DISTANCE,
    similarity: SimilarityQuery = DEFAULT_MIN_COSINE,
    embeddings: EmbeddingsQuery = True,
) -> DismissedPublic:
    """Mark a group as not duplicates; 404 for a key that names no current group of the tenant.

    Pass the ``kind`` and thresholds the group was listed with; without ``kind``, the key is looked up among the
    exact groups and the near groups at the default thresholds.
    """
    criteria = _criteria(kind, threshold, similarity, embeddings) if kind is not None else None
    dismiss_group(session, tenant_id=tenant.id, key=group_key, criteria=criteria)
    session.commit()
    return DismissedPublic(key=group_key, dismissed=True)
