"""The gallery's search box: ranked results for ``q`` in the search language, narrowed by the gallery's filters.

A query that does not parse never fails the page: its message is shown next to the box and the gallery stays as the
filters alone make it.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session

from orchestrator.gallery import GalleryFilters, GalleryPage
from orchestrator.search.engine import combine, filters_node, parse_offset, search
from orchestrator.search.query import MAX_QUERY_CHARS, SearchQueryError, parse

SYNTAX_HELP = (
    'words and "phrases" · tag:animal/cat tag:animal/* tag:animal/cat>=0.6 · kind:video status:failed · '
    'date:2024-05-01..2024-06-01 · name:holiday · person:"Alice" · nsfw<0.2 faces>=2 people>=2 · '
    "AND OR NOT -word (…)"
)


def _link(filters: GalleryFilters, q: str, offset: int) -> str:
    args: dict[str, str | int] = {**filters.query_args(), "q": q}
    if offset:
        args["offset"] = offset
    return "/gallery?" + urlencode(args)


def search_context(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    q: str,
    offset: str | None,
    filters: GalleryFilters,
    errors: dict[str, str],
) -> dict[str, Any]:
    """What the gallery page shows for the search box: with a usable ``q``, the ranked page and its links (replacing
    the gallery's own); with a bad one, its message under ``errors["q"]``."""
    q = q.strip()
    context: dict[str, Any] = {"q": q, "search_help": SYNTAX_HELP, "max_query_chars": MAX_QUERY_CHARS}
    if not q:
        return context
    try:
        tree = combine(parse(q), filters_node(filters))
        found = search(session, tenant_id=tenant_id, query=tree, offset=parse_offset(offset))
    except SearchQueryError as exc:
        errors["q"] = exc.message
        return context
    previous, following = found.previous_offset, found.next_offset
    context.update(
        {
            "page": GalleryPage(
                items=[hit.item for hit in found.hits], total=found.total, older=None, newer=None, limit=found.limit
            ),
            "scores": {hit.item.id: hit.score for hit in found.hits},
            "ranked_by": found.ranked_by,
            "older_url": _link(filters, q, following) if following is not None else None,
            "newer_url": _link(filters, q, previous) if previous is not None else None,
            "first_url": _link(filters, q, 0) if found.offset > 0 else None,
        }
    )
    return context
