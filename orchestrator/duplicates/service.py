"""A tenant's duplicate groups (data access, keyword-only): exact copies (the same bytes in several jobs) and
near-duplicates (perceptual hash and CLIP embedding, ``groups.near_groups``), and dismissing a group.

A dismissed group stays hidden while its membership is the same: its key hashes the sorted member ids, so a new
copy joining it (or a member leaving) makes a new key and the group shows again.
"""

from __future__ import annotations

import re
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.db.models import Asset, DuplicateDismissal, Embedding
from orchestrator.duplicates.groups import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_COSINE,
    MAX_DISTANCE_LIMIT,
    Group,
    Link,
    equal_groups,
    group_key,
    near_groups,
)
from orchestrator.duplicates.phash import FLAT_HASH
from orchestrator.enums import AssetStatus
from orchestrator.errors import NotFoundError
from orchestrator.gallery import AssetCard, card_fields

EMBEDDING_ANALYZER = "clip"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
GROUP_KEY_PATTERN = re.compile(r"[0-9a-f]{64}")


class DuplicateKind(StrEnum):
    """Which duplicates: the same bytes, or pictures that look the same."""

    EXACT = "exact"
    NEAR = "near"


@dataclass(frozen=True)
class Criteria:
    """How near is near: at most ``max_distance`` of 64 hash bits apart, or embeddings at least ``min_cosine``
    similar (None turns that measure off). Exact groups ignore both."""

    kind: DuplicateKind = DuplicateKind.EXACT
    max_distance: int | None = DEFAULT_MAX_DISTANCE
    min_cosine: float | None = DEFAULT_MIN_COSINE

    def __post_init__(self) -> None:
        if self.max_distance is not None and not 0 <= self.max_distance <= MAX_DISTANCE_LIMIT:
            raise ValueError(f"max_distance must be within 0..{MAX_DISTANCE_LIMIT}")
        if self.min_cosine is not None and not 0.5 <= self.min_cosine <= 1.0:
            raise ValueError("min_cosine must be within 0.5..1")


@dataclass(frozen=True)
class DuplicateItem(AssetCard):
    """One member of a group as a gallery card shows it, with why it belongs (None for the group's first)."""

    reason: str | None


@dataclass(frozen=True)
class DuplicateGroup:
    """A group of duplicates, oldest member first, with its key (for dismissing) and what joins it."""

    key: str
    kind: DuplicateKind
    reason: str
    items: list[DuplicateItem]


@dataclass(frozen=True)
class DuplicateGroups:
    """One page of groups, largest first; ``total`` counts the shown groups, ``hidden`` the dismissed ones."""

    groups: list[DuplicateGroup]
    total: int
    hidden: int
    criteria: Criteria
    limit: int
    offset: int


@dataclass(frozen=True)
class _Found:
    """A group before its rows are loaded: member ids, a reason for the group and one per member."""

    members: list[uuid.UUID]
    reason: str
    # why each member after the first belongs, and the member it was matched with
    member_reasons: dict[uuid.UUID, tuple[str, uuid.UUID]]


def duplicate_groups(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    criteria: Criteria | None = None,
    limit: int = PAGE_SIZE,
    offset: int = 0,
    include_dismissed: bool = False,
) -> DuplicateGroups:
    """The tenant's duplicate groups of one kind, largest first, without the dismissed ones (unless asked)."""
    criteria = criteria or Criteria()
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    offset = max(0, offset)
    found = _find(session, tenant_id=tenant_id, criteria=criteria)
    dismissed = set(
        session.scalars(select(DuplicateDismissal.group_key).where(DuplicateDismissal.tenant_id == tenant_id))
    )
    keyed = [(group_key(group.members), group) for group in found]
    shown = [(key, group) for key, group in keyed if include_dismissed or key not in dismissed]
    page = shown[offset : offset + limit]
    rows = _assets(session, tenant_id=tenant_id, ids=[m for _, group in page for m in group.members])
    groups = [
        DuplicateGroup(
            key=key,
            kind=criteria.kind,
            reason=group.reason,
            items=[_item(rows[m], _reason(group, m, rows)) for m in group.members if m in rows],
        )
        for key, group in page
    ]
    return DuplicateGroups(
        groups=groups,
        total=len(shown),
        hidden=len(keyed) - len(shown),
        criteria=criteria,
        limit=limit,
        offset=offset,
    )


def dismiss_group(session: Session, *, tenant_id: uuid.UUID, key: str, criteria: Criteria | None = None) -> None:
    """Mark a current group of the tenant as not duplicates; it stays hidden until its membership changes.

    ``criteria`` are those the group was found with; None looks among the exact groups and the near groups at the
    default thresholds. A key that names no current group of this tenant (another tenant's, a stale one) raises
    NotFoundError. Dismissing twice is harmless.
    """
    if GROUP_KEY_PATTERN.fullmatch(key) is None:
        raise NotFoundError("duplicate group not found")
    kinds = [criteria] if criteria else [Criteria(kind=DuplicateKind.EXACT), Criteria(kind=DuplicateKind.NEAR)]
    if not any(key in {group_key(g.members) for g in _find(session, tenant_id=tenant_id, criteria=c)} for c in kinds):
        raise NotFoundError("duplicate group not found; it may have changed since it was shown")
    if session.get(DuplicateDismissal, (tenant_id, key)) is not None:
        return
    try:
        with session.begin_nested():
            session.add(DuplicateDismissal(tenant_id=tenant_id, group_key=key))
    except IntegrityError:
        pass  # dismissed at the same moment by another request: the row we wanted is there


def _find(session: Session, *, tenant_id: uuid.UUID, criteria: Criteria) -> list[_Found]:
    if criteria.kind == DuplicateKind.EXACT:
        return _exact(session, tenant_id=tenant_id)
    return _near(session, tenant_id=tenant_id, criteria=criteria)


def _exact(session: Session, *, tenant_id: uuid.UUID) -> list[_Found]:
    stored = (Asset.tenant_id == tenant_id, Asset.sha256.is_not(None), Asset.storage_key.is_not(None))
    repeated = (
        select(Asset.sha256).where(*stored).group_by(Asset.sha256).having(func.count(func.distinct(Asset.job_id)) > 1)
    )
    rows = session.execute(
        select(Asset.id, Asset.sha256).where(*stored, Asset.sha256.in_(repeated)).order_by(Asset.created_at, Asset.id)
    ).all()
    ids = [asset_id for asset_id, _ in rows]
    found = []
    for indices in equal_groups([sha for _, sha in rows]):
        sha = str(rows[indices[0]][1])
        members = [ids[i] for i in indices]
        reasons = {m: ("same bytes as", members[0]) for m in members[1:]}
        found.append(_Found(members=members, reason=f"same bytes (sha256 {sha[:12]}…)", member_reasons=reasons))
    return found


def _near(session: Session, *, tenant_id: uuid.UUID, criteria: Criteria) -> list[_Found]:
    order: list[uuid.UUID] = []
    index: dict[uuid.UUID, int] = {}

    def item(asset_id: uuid.UUID) -> int:
        if asset_id not in index:
            index[asset_id] = len(order)
            order.append(asset_id)
        return index[asset_id]

    live = (Asset.tenant_id == tenant_id, Asset.status != AssetStatus.FAILED)
    hash_items: list[int] = []
    hashes: list[int] = []
    if criteria.max_distance is not None:
        for asset_id, value in session.execute(
            select(Asset.id, Asset.phash)
            .where(*live, Asset.phash.is_not(None), Asset.phash != FLAT_HASH)
            .order_by(Asset.created_at, Asset.id)
        ):
            hash_items.append(item(asset_id))
            hashes.append(int(str(value), 16))
    embedding_items: list[int] = []
    vectors: list[bytes] = []
    if criteria.min_cosine is not None:
        dim = _common_dimension(session, tenant_id=tenant_id)
        if dim is not None:
            for asset_id, vector in session.execute(
                select(Embedding.asset_id, Embedding.vector)
                .join(Asset, Asset.id == Embedding.asset_id)
                .where(*live, Embedding.analyzer == EMBEDDING_ANALYZER, Embedding.dim == dim)
                .order_by(Asset.created_at, Asset.id)
            ):
                if len(vector) == dim * 4:
                    embedding_items.append(item(asset_id))
                    vectors.append(vector)
    matrix = (
        np.frombuffer(b"".join(vectors), dtype="<f4").reshape(len(vectors), -1)
        if vectors
        else np.empty((0, 0), dtype=np.float32)
    )
    groups = near_groups(
        hash_items=np.asarray(hash_items, dtype=np.int64),
        hashes=np.asarray(hashes, dtype=np.uint64),
        embedding_items=np.asarray(embedding_items, dtype=np.int64),
        embeddings=matrix.astype(np.float32),
        max_distance=criteria.max_distance,
        min_cosine=criteria.min_cosine,
    )
    return [_near_found(group, order) for group in groups]


def _common_dimension(session: Session, *, tenant_id: uuid.UUID) -> int | None:
    """The embedding size most of the tenant's CLIP vectors have (a model change leaves older vectors apart)."""
    count = func.count().label("n")
    row = session.execute(
        select(Embedding.dim, count)
        .where(Embedding.tenant_id == tenant_id, Embedding.analyzer == EMBEDDING_ANALYZER)
        .group_by(Embedding.dim)
        .order_by(count.desc(), Embedding.dim)
        .limit(1)
    ).first()
    return int(row[0]) if row is not None else None


def describe(link: Link) -> str:
    """Why two items are near-duplicates, for people: ``phash distance 3``, ``cosine 0.97``, or both."""
    parts = []
    if link.phash_distance is not None:
        parts.append(f"phash distance {link.phash_distance}")
    if link.cosine is not None:
        parts.append(f"cosine {link.cosine:.3f}")
    return ", ".join(parts)


def _near_found(group: Group, order: Sequence[uuid.UUID]) -> _Found:
    """Members oldest first (the order items were numbered in); each after the first is explained by the link that
    reached it from the first along the group's tree."""
    neighbours: dict[int, list[tuple[int, Link]]] = {}
    for link in group.links:
        neighbours.setdefault(link.a, []).append((link.b, link))
        neighbours.setdefault(link.b, []).append((link.a, link))
    root = group.members[0]
    reasons: dict[uuid.UUID, tuple[str, uuid.UUID]] = {}
    seen, queue = {root}, deque([root])
    while queue:
        current = queue.popleft()
        for other, link in neighbours.get(current, []):
            if other not in seen:
                seen.add(other)
                reasons[order[other]] = (f"{describe(link)} to", order[current])
                queue.append(other)
    distances = [link.phash_distance for link in group.links if link.phash_distance is not None]
    cosines = [link.cosine for link in group.links if link.cosine is not None]
    summary = []
    if distances:
        summary.append(f"phash distance {max(distances)} or less")
    if cosines:
        summary.append(f"cosine {min(cosines):.3f} or more")
    return _Found(
        members=[order[m] for m in group.members], reason="near: " + "; ".join(summary), member_reasons=reasons
    )


def _assets(session: Session, *, tenant_id: uuid.UUID, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Asset]:
    if not ids:
        return {}
    rows = session.scalars(select(Asset).where(Asset.tenant_id == tenant_id, Asset.id.in_(list(ids))))
    return {row.id: row for row in rows}


def _reason(group: _Found, member: uuid.UUID, rows: dict[uuid.UUID, Asset]) -> str | None:
    if member not in group.member_reasons:
        return None
    text, other = group.member_reasons[member]
    return f"{text} {rows[other].original_name if other in rows else other}"


def _item(asset: Asset, reason: str | None) -> DuplicateItem:
    return DuplicateItem(**card_fields(asset), reason=reason)
