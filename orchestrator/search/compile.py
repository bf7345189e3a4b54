"""A query tree as SQLAlchemy conditions on ``Asset``, for PostgreSQL and SQLite, always within one tenant.

Full text on PostgreSQL is ``to_tsvector('english', body) @@ <tsquery>``, written exactly as the expression of the
GIN index ``ix_search_documents_body_fts`` so that the index answers it; user text only ever reaches
``plainto_tsquery``/``phraseto_tsquery`` as a bound value. On SQLite it is an FTS5 MATCH on ``search_fts``, whose
query string is built here from the user's words, each one a quoted FTS5 string, so no user text is ever FTS5 syntax.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Float,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    not_,
    or_,
    outerjoin,
    select,
    true,
    union_all,
)
from sqlalchemy.sql import Select, column, table

from orchestrator.db.models import Asset, Face, Person, Result, ResultTag, SearchDocument
from orchestrator.search.query import (
    And,
    DateRange,
    JobIs,
    Kind,
    NameContains,
    Node,
    Not,
    NumberRange,
    Or,
    PersonIs,
    Status,
    Tag,
    Text,
)

Dialect = Literal["postgresql", "sqlite"]
# A literal, not a parameter: it must match the index expression.
FTS_CONFIG: ColumnElement[Any] = literal_column("'english'")
FTS_TABLE = table("search_fts", column("rowid"), column("body"))
FTS_WORD = re.compile(r"\w+")
# PostgreSQL's 'english' configuration drops these words (the Snowball list); FTS5 keeps every word, so a word or
# phrase made only of them is left out on SQLite as well, and "the cat" finds the same assets on both.
_STOP_WORDS_TEXT = (
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers "
    "herself it its itself they them their theirs themselves what which who whom this that these those am is are "
    "was were be been being have has had having do does did doing a an the and but if or because as until while of "
    "at by for with about against between into through during before after above below to from up down in out on "
    "off over under again further then once here there when where why how all any both each few more most other "
    "some such no nor not only own same so than too very s t can will just don should now"
)
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
# The payload number each numeric field reads: (analyzer, payload key).
NUMBER_SOURCES = {"faces": ("faces", "face_count"), "people": ("objects", "person_count")}
# Where nsfw_score (orchestrator.job_reports) looks, in its order of preference.
NSFW_SOURCES = (("nsfw", "nsfw_score"), ("clip", "nsfw_classifier_score"), ("clip", "nsfw_score"))


def dialect_of(name: str) -> Dialect:
    """The dialect a query is compiled for; PostgreSQL or SQLite (what this system runs on)."""
    return "postgresql" if name == "postgresql" else "sqlite"


def fts5_query(text: Text) -> str | None:
    """The FTS5 query of a word or phrase (pure): its words as quoted FTS5 strings; None when it has only stop words.

    A word's parts (``animal/cat``) and a phrase's words must appear in order, as one FTS5 phrase.
    """
    words = FTS_WORD.findall(text.text)
    if all(word.lower() in STOP_WORDS for word in words):
        return None
    return '"' + " ".join(w.replace('"', '""') for w in words) + '"'


def tsvector() -> ColumnElement[Any]:
    """The indexed expression: ``to_tsvector('english', search_documents.body)``."""
    return func.to_tsvector(FTS_CONFIG, SearchDocument.body)


def tsquery(text: Text) -> ColumnElement[Any]:
    """The PostgreSQL tsquery of a word or phrase; the text is a bound value."""
    fn = func.phraseto_tsquery if text.phrase else func.plainto_tsquery
    return fn(FTS_CONFIG, text.text)


def fts5_match(query: str) -> ColumnElement[bool]:
    """``search_fts MATCH :query``."""
    return literal_column("search_fts").op("MATCH")(query)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def json_number(payload: Any, key: str, dialect: Dialect) -> ColumnElement[Any]:
    """A payload field as a float, NULL when it is missing or not a JSON number (payloads come from workers, some of
    them rented machines: a string there must not fail the query)."""
    if dialect == "postgresql":
        return case((func.json_typeof(payload[key]) == "number", cast(payload[key].as_string(), Float)), else_=None)
    path = f'$."{key}"'
    return case((func.json_type(payload, path).in_(("integer", "real")), func.json_extract(payload, path)), else_=None)


def _bounds(value: ColumnElement[Any], term: NumberRange) -> ColumnElement[bool]:
    parts: list[ColumnElement[bool]] = []
    if term.low is not None:
        parts.append(value >= term.low if term.low_inclusive else value > term.low)
    if term.high is not None:
        parts.append(value <= term.high if term.high_inclusive else value < term.high)
    return and_(*parts)


def tag_match(term: Tag) -> ColumnElement[bool]:
    """Conditions on ResultTag for one tag term: the tag (or prefix) and its score threshold."""
    if term.prefix:
        # LIKE ignores case on SQLite; the comparison of the first characters keeps a prefix as exact as a tag.
        parts = [
            ResultTag.tag.startswith(term.tag, autoescape=True),
            func.substr(ResultTag.tag, 1, len(term.tag)) == term.tag,
        ]
    else:
        parts = [ResultTag.tag == term.tag]
    if term.min_score is not None:
        parts.append(ResultTag.score >= term.min_score if term.inclusive else ResultTag.score > term.min_score)
    return and_(*parts)


@dataclass(frozen=True)
class Compiler:
    """Compiles query trees for one tenant on one dialect."""

    tenant_id: uuid.UUID
    dialect: Dialect

    def condition(self, node: Node | None) -> ColumnElement[bool]:
        """The condition an asset of the tenant must meet; the tenant itself is always part of it."""
        own = Asset.tenant_id == self.tenant_id
        return own if node is None else and_(own, self.node(node))

    def node(self, node: Node) -> ColumnElement[bool]:
        """The condition of one node of the tree (without the tenant)."""
        if isinstance(node, And):
            return and_(*(self.node(child) for child in node.children))
        if isinstance(node, Or):
            return or_(*(self.node(child) for child in node.children))
        if isinstance(node, Not):
            return not_(self.node(node.child))
        if isinstance(node, Text):
            return self.text(node)
        if isinstance(node, Tag):
            found = select(ResultTag.asset_id).where(ResultTag.tenant_id == self.tenant_id, tag_match(node))
            return Asset.id.in_(found)
        if isinstance(node, Kind):
            return Asset.media_kind.in_([k.value for k in node.kinds])
        if isinstance(node, Status):
            return Asset.status.in_([s.value for s in node.statuses])
        if isinstance(node, DateRange):
            return self.dates(node)
        if isinstance(node, JobIs):
            return Asset.job_id == node.job_id
        if isinstance(node, NameContains):
            return func.lower(Asset.original_name).contains(node.text.lower(), autoescape=True)
        if isinstance(node, PersonIs):
            return self.person(node)
        return self.number(node)

    def text(self, term: Text) -> ColumnElement[bool]:
        """Full text over the search documents of the tenant."""
        if self.dialect == "postgresql":
            query = tsquery(term)
            found = select(SearchDocument.asset_id).where(
                SearchDocument.tenant_id == self.tenant_id, tsvector().op("@@")(query)
            )
            # A word PostgreSQL drops as a stop word ("the", "a") is left out of the query, as it is from documents.
            return or_(Asset.id.in_(found), func.numnode(query) == 0)
        match = fts5_query(term)
        if match is None:
            return true()
        # The MATCH runs once, as a list of document ids; joined instead, SQLite probed FTS5 once per document.
        matching = select(FTS_TABLE.c.rowid).where(fts5_match(match))
        found = select(SearchDocument.asset_id).where(
            SearchDocument.tenant_id == self.tenant_id, SearchDocument.id.in_(matching)
        )
        return Asset.id.in_(found)

    def dates(self, term: DateRange) -> ColumnElement[bool]:
        """Created within the UTC days of the range."""
        parts: list[ColumnElement[bool]] = []
        if term.start is not None:
            parts.append(Asset.created_at >= _day_start(term.start))
        if term.end is not None:
            parts.append(Asset.created_at < _day_start(term.end + timedelta(days=1)))
        return and_(*parts)

    def person(self, term: PersonIs) -> ColumnElement[bool]:
        """A face of the asset belongs to the person (of this tenant)."""
        faces = select(Face.asset_id).where(Face.tenant_id == self.tenant_id)
        if term.person_id is not None:
            return Asset.id.in_(faces.where(Face.person_id == term.person_id))
        named = select(Person.id).where(
            Person.tenant_id == self.tenant_id, func.lower(Person.name) == (term.name or "").lower()
        )
        return Asset.id.in_(faces.where(Face.person_id.in_(named)))

    def number(self, term: NumberRange) -> ColumnElement[bool]:
        """A payload number (NSFW score, face count, person count) within bounds; assets without it never match."""
        if term.field == "nsfw":
            return _bounds(self.nsfw_score(), term)
        analyzer, key = NUMBER_SOURCES[term.field]
        found = select(Result.asset_id).where(
            Result.tenant_id == self.tenant_id,
            Result.analyzer == analyzer,
            _bounds(json_number(Result.payload, key, self.dialect), term),
        )
        return Asset.id.in_(found)

    def nsfw_score(self) -> ColumnElement[Any]:
        """The asset's NSFW score as ``orchestrator.job_reports.nsfw_score`` picks it: the first number found."""
        picks = [
            select(json_number(Result.payload, key, self.dialect))
            .where(Result.asset_id == Asset.id, Result.tenant_id == self.tenant_id, Result.analyzer == analyzer)
            .scalar_subquery()
            for analyzer, key in NSFW_SOURCES
        ]
        return func.coalesce(*picks)

    # -- ranking ------------------------------------------------------------------------------------------------------

    # Scores are computed once per query as one table of (asset_id, score) and outer-joined, not as a subquery per
    # asset: a correlated subquery per row re-read the tag index for every asset (11.6 s instead of 0.09 s for one tag
    # over 20,000 assets on SQLite, measured). One table, not one per kind of term: SQLite indexed only one of two.

    def ranked_from(self, texts: list[Text], tags: list[Tag]) -> tuple[Any, ColumnElement[Any]]:
        """``Asset`` outer-joined to the scores of the ranking terms, and the score (higher is better): full-text
        relevance to the words and phrases plus the sum of the scores of the tags that the tag terms match."""
        parts: list[Select[uuid.UUID, float]] = []
        if texts:
            relevance = self.relevance(texts)
            if relevance is not None:
                parts.append(relevance)
        if tags:
            matched: Select[uuid.UUID, float] = select(
                ResultTag.asset_id.label("asset_id"), ResultTag.score.label("score")
            )
            parts.append(matched.where(ResultTag.tenant_id == self.tenant_id, or_(*(tag_match(t) for t in tags))))
        if not parts:
            return Asset, literal(0.0)
        found = union_all(*parts).subquery("found") if len(parts) > 1 else parts[0].subquery("found")
        summed = select(found.c.asset_id.label("asset_id"), func.sum(found.c.score).label("score")).group_by(
            found.c.asset_id
        )
        # PostgreSQL: computed once whatever the plan (without statistics, after a bulk load, it re-ran the
        # aggregate for every asset: minutes at 20,000 assets). SQLite: a subquery, which it indexes for the join.
        scores = (
            summed.cte("scores").prefix_with("MATERIALIZED")
            if self.dialect == "postgresql"
            else summed.subquery("scores")
        )
        return outerjoin(Asset, scores, scores.c.asset_id == Asset.id), func.coalesce(scores.c.score, 0.0)

    def relevance(self, texts: list[Text]) -> Select[uuid.UUID, float] | None:
        """(asset_id, full-text relevance) of the documents that match any of the words and phrases; None when none
        has a word to search for."""
        if self.dialect == "postgresql":
            queries = [tsquery(t) for t in texts]
            combined = queries[0]
            for query in queries[1:]:
                combined = combined.op("||")(query)
            return select(
                SearchDocument.asset_id.label("asset_id"), func.ts_rank_cd(tsvector(), combined).label("score")
            ).where(SearchDocument.tenant_id == self.tenant_id, tsvector().op("@@")(combined))
        matches = [q for q in (fts5_query(t) for t in texts) if q is not None]
        if not matches:
            return None
        # Materialized on its own: bm25() only works in the query that holds the MATCH, and SQLite must never merge
        # it into another query or start the join from the documents (both fail with "unable to use function bm25").
        bm25 = (
            select(FTS_TABLE.c.rowid.label("document_id"), (-func.bm25(literal_column("search_fts"))).label("score"))
            .where(fts5_match(" OR ".join(matches)))
            .cte("fts_scores")
            .prefix_with("MATERIALIZED")
        )
        return (
            select(SearchDocument.asset_id.label("asset_id"), bm25.c.score.label("score"))
            .select_from(bm25)
            .join(SearchDocument, SearchDocument.id == bm25.c.document_id)
            .where(SearchDocument.tenant_id == self.tenant_id)
        )
