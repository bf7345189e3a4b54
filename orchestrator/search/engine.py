"""Ranked search over a tenant's assets (data access, keyword-only).

Order: with words or phrases, full-text relevance (PostgreSQL ``ts_rank_cd``, SQLite ``-bm25``) plus the scores of
the tags the tag terms matched; with tag terms only, the sum of those scores; otherwise newest first. Ties fall back
to newest first, then the asset id, so the order is total and offset pages never repeat or skip an asset.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.db.models import Asset
from orchestrator.gallery import GalleryFilters, GalleryItem, gallery_items
from orchestrator.search.compile import Compiler, dialect_of
from orchestrator.search.query import (
    And,
    DateRange,
    JobIs,
    Kind,
    Node,
    SearchQueryError,
    Status,
    Tag,
    Text,
    parse,
    positive_terms,
)

PAGE_SIZE = 48
MAX_PAGE_SIZE = 200
# Offset pages cost more the deeper they go; past this, narrowing the query is the better way down.
MAX_OFFSET = 10_000
# Significant digits, not decimals: BM25 gives tiny scores to words that most documents of a small library share.
SCORE_DIGITS = 6
RankedBy = Literal["relevance", "tags", "newest"]


@dataclass(frozen=True)
class SearchHit:
    """One asset found, as a gallery card, with its rank score (None when ordered newest first)."""

    item: GalleryItem
    score: float | None


@dataclass(frozen=True)
class SearchPage:
    """One page of ranked results, with the total count of matching assets."""

    hits: list[SearchHit]
    total: int
    offset: int
    limit: int
    ranked_by: RankedBy

    @property
    def next_offset(self) -> int | None:
        """The offset of the next page, None on the last (or past the deepest page served)."""
        following = self.offset + len(self.hits)
        return following if following < self.total and following < MAX_OFFSET else None

    @property
    def previous_offset(self) -> int | None:
        """The offset of the previous page, None on the first."""
        return max(0, self.offset - self.limit) if self.offset > 0 else None


def combine(*nodes: Node | None) -> Node | None:
    """The AND of these trees, leaving out empty ones (for adding filters to a parsed query)."""
    kept = tuple(n for n in nodes if n is not None)
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else And(kept)


def search(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    query: str | Node | None,
    offset: int = 0,
    limit: int = PAGE_SIZE,
) -> SearchPage:
    """One page of the tenant's assets that match ``query`` (a query string or a parsed tree), best first.

    Raises SearchQueryError for a query that does not parse, or an offset past :data:`MAX_OFFSET`.
    """
    if offset < 0 or offset > MAX_OFFSET:
        raise SearchQueryError(f"results are served up to {MAX_OFFSET} deep; narrow the query", position=0)
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    tree = parse(query) if isinstance(query, str) else query
    compiler = Compiler(tenant_id=tenant_id, dialect=dialect_of(session.get_bind().dialect.name))
    where = compiler.condition(tree)
    terms = positive_terms(tree)
    texts = [t for t in terms if isinstance(t, Text)]
    tags = [t for t in terms if isinstance(t, Tag)]
    ranked_by: RankedBy = "relevance" if texts else "tags" if tags else "newest"
    newest = (Asset.created_at.desc(), Asset.id.desc())
    rows: list[tuple[Asset, float | None]]
    if ranked_by == "newest":
        plain = select(Asset).where(where).order_by(*newest).offset(offset).limit(limit)
        rows = [(asset, None) for asset in session.scalars(plain)]
    else:
        joined, score = compiler.ranked_from(texts, tags)
        labelled = score.label("score")
        ranked = (
            select(Asset, labelled)
            .select_from(joined)
            .where(where)
            .order_by(labelled.desc(), *newest)
            .offset(offset)
            .limit(limit)
        )
        rows = [(asset, float(value or 0.0)) for asset, value in session.execute(ranked)]
    total = int(session.scalar(select(func.count()).select_from(Asset).where(where)) or 0)
    assets = [asset for asset, _ in rows]
    items = gallery_items(session, tenant_id=tenant_id, assets=assets)
    hits = [
        SearchHit(item=item, score=None if value is None else float(f"{value:.{SCORE_DIGITS}g}"))
        for item, (_, value) in zip(items, rows, strict=True)
    ]
    return SearchPage(hits=hits, total=total, offset=offset, limit=limit, ranked_by=ranked_by)


def filters_node(filters: GalleryFilters) -> Node | None:
    """The gallery's filter fields as a query tree, to narrow a search the same way they narrow the gallery."""
    nodes: list[Node] = []
    if filters.tag is not None:
        prefix = filters.tag.endswith("*")
        nodes.append(Tag(tag=filters.tag[:-1] if prefix else filters.tag, prefix=prefix))
    if filters.kind is not None:
        nodes.append(Kind((filters.kind,)))
    if filters.status is not None:
        nodes.append(Status((filters.status,)))
    if filters.created_from is not None or filters.created_to is not None:
        nodes.append(DateRange(filters.created_from, filters.created_to))
    if filters.job_id is not None:
        nodes.append(JobIs(filters.job_id))
    return combine(*nodes)


def parse_offset(raw: str | None) -> int:
    """An offset from a page link: a whole number from 0 to :data:`MAX_OFFSET`; anything else is 0."""
    text = (raw or "").strip()
    return min(int(text), MAX_OFFSET) if text.isdigit() and len(text) <= 6 else 0
