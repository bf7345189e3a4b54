"""The text an asset is found by: its tag words, its transcript and its file name, one search document per asset.

Documents are derived from results and rebuilt from them at will. Writing a document's row is all it takes: SQLite's
FTS5 table follows through triggers, PostgreSQL's expression index through the row itself (migration 0009).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import Insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Result, ResultTag, SearchDocument

TRANSCRIBE_ANALYZER = "transcribe"
# A PostgreSQL tsvector holds at most 1 MB and positions up to 16,383; a transcript past this adds little to find.
MAX_TRANSCRIPT_CHARS = 100_000
MAX_BODY_CHARS = 200_000
REFRESH_CHUNK = 500
_SEPARATORS = re.compile(r"[/_\-.]+")


def tag_words(tag: str) -> str:
    """A tag as text: the whole tag and its words (``animal/cat`` gives ``animal/cat animal cat``)."""
    words = " ".join(w for w in _SEPARATORS.split(tag) if w)
    return f"{tag} {words}" if words and words != tag else tag


def name_words(name: str) -> str:
    """A file name as text: the whole name and the words of its stem and extension."""
    words = " ".join(w for w in _SEPARATORS.split(name) if w)
    return f"{name} {words}" if words and words != name else name


def document_body(*, name: str, tags: Iterable[str], transcript: str | None) -> str:
    """The searchable text of one asset (pure): file name words, tag words (each tag once), transcript."""
    parts = [name_words(name)] if name else []
    parts += [tag_words(tag) for tag in dict.fromkeys(tags)]
    if transcript:
        parts.append(transcript[:MAX_TRANSCRIPT_CHARS])
    return "\n".join(parts)[:MAX_BODY_CHARS]


def _bodies(session: Session, *, tenant_id: uuid.UUID, asset_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    own = select(Asset.id, Asset.original_name).where(Asset.tenant_id == tenant_id, Asset.id.in_(asset_ids))
    names: dict[uuid.UUID, str] = {asset_id: name for asset_id, name in session.execute(own)}
    tags: dict[uuid.UUID, list[str]] = {a: [] for a in names}
    for asset_id, tag in session.execute(
        select(ResultTag.asset_id, ResultTag.tag)
        .where(ResultTag.tenant_id == tenant_id, ResultTag.asset_id.in_(list(names)))
        .order_by(ResultTag.asset_id, ResultTag.score.desc(), ResultTag.tag)
    ):
        tags[asset_id].append(tag)
    transcripts: dict[uuid.UUID, str] = {}
    for asset_id, text in session.execute(
        select(Result.asset_id, Result.payload["text"].as_string()).where(
            Result.tenant_id == tenant_id, Result.asset_id.in_(list(names)), Result.analyzer == TRANSCRIBE_ANALYZER
        )
    ):
        if isinstance(text, str):
            transcripts[asset_id] = text
    return {
        asset_id: document_body(name=name, tags=tags[asset_id], transcript=transcripts.get(asset_id))
        for asset_id, name in names.items()
    }


def refresh_documents(session: Session, *, tenant_id: uuid.UUID, asset_ids: Sequence[uuid.UUID]) -> int:
    """Write the search documents of these assets of the tenant from their current results; returns how many.

    An upsert on ``asset_id``: a reanalysed or renamed asset gets its document replaced, and two writers of the same
    asset cannot both insert. Other tenants' asset ids are ignored.
    """
    written = 0
    ids = list(dict.fromkeys(asset_ids))
    statement = _upsert_statement(session.get_bind().dialect.name)
    for start in range(0, len(ids), REFRESH_CHUNK):
        bodies = _bodies(session, tenant_id=tenant_id, asset_ids=ids[start : start + REFRESH_CHUNK])
        if not bodies:
            continue
        now = utcnow()
        rows = [{"asset_id": a, "tenant_id": tenant_id, "body": body, "updated_at": now} for a, body in bodies.items()]
        # executemany of one cached statement: a multi-row VALUES would be compiled again for every batch, and
        # that compilation cost more than the database's work.
        session.execute(statement, rows)
        written += len(rows)
    return written


def _upsert_statement(dialect: str) -> Insert:
    """The document upsert on ``asset_id``: an unchanged document is left alone (no index churn for a redelivered
    batch)."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(SearchDocument)
    return statement.on_conflict_do_update(
        index_elements=[SearchDocument.asset_id],
        set_={"body": statement.excluded.body, "updated_at": statement.excluded.updated_at},
        where=SearchDocument.body != statement.excluded.body,
    )


def rebuild_documents(session: Session, *, tenant_id: uuid.UUID) -> int:
    """Rewrite the search documents of every asset of the tenant; returns how many."""
    ids = list(session.scalars(select(Asset.id).where(Asset.tenant_id == tenant_id).order_by(Asset.id)))
    return refresh_documents(session, tenant_id=tenant_id, asset_ids=ids)
