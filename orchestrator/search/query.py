"""The search query language: a pure parser from a query string to a tree of frozen dataclasses.

Grammar (EBNF; ``AND``, ``OR`` and ``NOT`` are operators only in capitals, anything else is a word)::

    query    = [ or_expr ] ;
    or_expr  = and_expr { "OR" and_expr } ;
    and_expr = not_expr { [ "AND" ] not_expr } ;          (* two terms side by side: AND *)
    not_expr = ( "NOT" | "-" ) not_expr | atom ;           (* "-" only directly before a term: -cat *)
    atom     = "(" or_expr ")" | field | phrase | word ;
    phrase   = '"' { any character but '"' } '"' ;
    word     = { any character but blank, '(', ')', '"' } ;
    field    = name ( ":" value | compare number ) ;
    value    = word | phrase ;
    compare  = ">=" | ">" | "<=" | "<" ;

Precedence: NOT binds tighter than AND, AND tighter than OR; ``a OR b c`` is ``a OR (b AND c)``.

Fields (names are case-insensitive)::

    tag:animal/cat  tag:animal/*  tag:animal/cat>=0.6  tag:animal/cat>0.6  tag:"scene/living room"
    kind:image  kind:image|video                 (image, video, audio)
    status:done  status:failed|analyzing         (uploaded, prepared, analyzing, done, failed)
    date:2024-05-01  date:2024-05-01..2024-06-01  date:2024-05-01..  date:..2024-06-01   (UTC days, ends included)
    job:<uuid>   name:<part of the file name>  name:"summer 2024"
    person:"Alice" (by name, any case)  person:<uuid>
    nsfw:0.2..0.8  nsfw>=0.5  nsfw<0.1           (scores in [0, 1]; a range includes both ends)
    faces>=2  faces:0  faces:1..3                (the faces analyzer's face count)
    people>=2  people:1                          (the objects analyzer's person count)

Words and phrases are full text over tag words, transcripts and file names; a word that looks like a field but
names none of these (``10:30``, ``body:*``) is text too. A word without any letter or digit
(``--``, ``=``) carries nothing to search for and is left out. Limits keep a query cheap: at most
:data:`MAX_QUERY_CHARS` characters, :data:`MAX_TERMS` terms and :data:`MAX_DEPTH` levels of nesting.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Literal

from gpu_worker.contract import MediaKind
from orchestrator.enums import AssetStatus
from orchestrator.errors import MediaAnalysisError

MAX_QUERY_CHARS = 1000
MAX_TERMS = 50
MAX_DEPTH = 12
MAX_VALUE_CHARS = 200
OPERATORS = frozenset({"AND", "OR", "NOT"})
# A term's field prefix: the name, then ':' or a comparison. Names are letters only.
FIELD_PATTERN = re.compile(r"([A-Za-z]+)(:|>=|<=|>|<)")
SCORE_SUFFIX = re.compile(r"(>=|>)(\d+(?:\.\d*)?|\.\d+)$")
WORD_CHARS = re.compile(r"\w")


class Field(StrEnum):
    """The fields a term may name."""

    TAG = "tag"
    KIND = "kind"
    STATUS = "status"
    DATE = "date"
    JOB = "job"
    NAME = "name"
    PERSON = "person"
    NSFW = "nsfw"
    FACES = "faces"
    PEOPLE = "people"


NumberField = Literal["nsfw", "faces", "people"]


class SearchQueryError(MediaAnalysisError):
    """A query that cannot be parsed; ``position`` is the 0-based character where the problem is."""

    code = "invalid_query"

    def __init__(self, message: str, *, position: int) -> None:
        super().__init__(f"{message} (at character {position + 1})")
        self.position = position
        self.reason = message


# -- the tree ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """Full text: a word (its words in any order) or a phrase (its words in this order)."""

    text: str
    phrase: bool = False


@dataclass(frozen=True)
class Tag:
    """A tag, exact (``animal/cat``) or a prefix (``animal/``), optionally with a score threshold."""

    tag: str
    prefix: bool = False
    min_score: float | None = None
    inclusive: bool = True


@dataclass(frozen=True)
class Kind:
    """The media kind is one of ``kinds``."""

    kinds: tuple[MediaKind, ...]


@dataclass(frozen=True)
class Status:
    """The asset status is one of ``statuses``."""

    statuses: tuple[AssetStatus, ...]


@dataclass(frozen=True)
class DateRange:
    """Created on a UTC day from ``start`` to ``end``, both included; None leaves that side open."""

    start: date | None
    end: date | None


@dataclass(frozen=True)
class JobIs:
    """The asset belongs to this job."""

    job_id: uuid.UUID


@dataclass(frozen=True)
class NameContains:
    """The file name contains this text (any case)."""

    text: str


@dataclass(frozen=True)
class PersonIs:
    """A face of the asset belongs to this person: by id, or by name (any case)."""

    person_id: uuid.UUID | None = None
    name: str | None = None


@dataclass(frozen=True)
class NumberRange:
    """A number of the asset (NSFW score, face count, person count) within bounds; None leaves a side open."""

    field: NumberField
    low: float | None = None
    low_inclusive: bool = True
    high: float | None = None
    high_inclusive: bool = True


@dataclass(frozen=True)
class And:
    """Every child matches."""

    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    """At least one child matches."""

    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """The child does not match."""

    child: Node


Term = Text | Tag | Kind | Status | DateRange | JobIs | NameContains | PersonIs | NumberRange
Node = Term | And | Or | Not


# -- tokens -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: Literal["(", ")", "-", "op", "phrase", "word"]
    text: str
    position: int
    # For a word whose value was quoted (tag:"scene/living room"): the unquoted value and what followed the quote.
    quoted: str | None = None
    suffix: str = ""


_STOP = frozenset(' \t\r\n\f\v()"')


def _read_quoted(query: str, start: int) -> tuple[str, int]:
    """The text between the quote at ``start`` and the next one, and the index after the closing quote."""
    end = query.find('"', start + 1)
    if end < 0:
        raise SearchQueryError('a quote (") is not closed', position=start)
    return query[start + 1 : end], end + 1


def tokenize(query: str) -> list[_Token]:
    """The tokens of ``query``; SearchQueryError for an unclosed quote."""
    tokens: list[_Token] = []
    i, n = 0, len(query)
    while i < n:
        char = query[i]
        if char.isspace():
            i += 1
        elif char in "()":
            tokens.append(_Token(char, char, i))  # type: ignore[arg-type]
            i += 1
        elif char == '"':
            text, i = _read_quoted(query, i)
            tokens.append(_Token("phrase", text, i - len(text) - 2))
        elif char == "-" and i + 1 < n and not query[i + 1].isspace() and query[i + 1] not in "-)":
            tokens.append(_Token("-", char, i))
            i += 1
        else:
            start = i
            while i < n and query[i] not in _STOP:
                i += 1
            word = query[start:i]
            if i < n and query[i] == '"' and word.endswith(":"):
                quoted, i = _read_quoted(query, i)
                suffix_start = i
                while i < n and query[i] not in _STOP:
                    i += 1
                tokens.append(_Token("word", word, start, quoted=quoted, suffix=query[suffix_start:i]))
            elif word in OPERATORS:
                tokens.append(_Token("op", word, start))
            else:
                tokens.append(_Token("word", word, start))
    return tokens


# -- parser -----------------------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, query: str) -> None:
        self.query = query
        self.tokens = tokenize(query)
        self.index = 0
        self.terms = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def end(self) -> int:
        return len(self.query)

    def parse(self) -> Node | None:
        if self.peek() is None:
            return None
        node = self.or_expr(0)
        extra = self.peek()
        if extra is not None:
            if extra.kind == ")":
                raise SearchQueryError("')' without a matching '('", position=extra.position)
            raise SearchQueryError(f"unexpected {extra.text!r}", position=extra.position)
        return node

    def or_expr(self, depth: int) -> Node | None:
        parts = [self.and_expr(depth)]
        while (token := self.peek()) is not None and token.kind == "op" and token.text == "OR":
            self.take()
            if self.peek() is None or self.peek().kind == ")":  # type: ignore[union-attr]
                raise SearchQueryError("OR needs a term after it", position=token.position)
            parts.append(self.and_expr(depth))
        return _combine(Or, parts)

    def and_expr(self, depth: int) -> Node | None:
        token = self.peek()
        if token is None:
            raise SearchQueryError("a term is missing here", position=self.end())
        if token.kind == "op" and token.text in {"AND", "OR"}:
            raise SearchQueryError(f"{token.text} needs a term before it", position=token.position)
        if token.kind == ")":
            raise SearchQueryError("a term is missing before ')'", position=token.position)
        parts = [self.not_expr(depth)]
        while (token := self.peek()) is not None and token.kind != ")" and not _is_op(token, "OR"):
            if token.kind == "op" and token.text == "AND":
                self.take()
                after = self.peek()
                if after is None or after.kind == ")" or (after.kind == "op" and after.text in {"AND", "OR"}):
                    raise SearchQueryError("AND needs a term after it", position=token.position)
            parts.append(self.not_expr(depth))
        return _combine(And, parts)

    def not_expr(self, depth: int) -> Node | None:
        token = self.take()
        if token.kind == "-" or (token.kind == "op" and token.text == "NOT"):
            if depth >= MAX_DEPTH:
                raise SearchQueryError(f"a query nests at most {MAX_DEPTH} levels", position=token.position)
            after = self.peek()
            if after is None or after.kind == ")" or (after.kind == "op" and after.text in {"AND", "OR"}):
                raise SearchQueryError(f"{token.text} needs a term after it", position=token.position)
            child = self.not_expr(depth + 1)
            return None if child is None else Not(child)
        if token.kind == "(":
            if depth >= MAX_DEPTH:
                raise SearchQueryError(f"a query nests at most {MAX_DEPTH} levels", position=token.position)
            inner = self.peek()
            if inner is None:
                raise SearchQueryError("'(' is not closed", position=token.position)
            if inner.kind == ")":
                raise SearchQueryError("empty parentheses", position=token.position)
            node = self.or_expr(depth + 1)
            closing = self.peek()
            if closing is None or closing.kind != ")":
                raise SearchQueryError("'(' is not closed", position=token.position)
            self.take()
            return node
        if token.kind == ")":
            raise SearchQueryError("')' without a matching '('", position=token.position)
        self.count(token)
        if token.kind == "phrase":
            return Text(token.text, phrase=True) if WORD_CHARS.search(token.text) else None
        return _term(token)

    def count(self, token: _Token) -> None:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise SearchQueryError(f"a query has at most {MAX_TERMS} terms", position=token.position)


def _is_op(token: _Token, *names: str) -> bool:
    return token.kind == "op" and token.text in names


def _combine(kind: type[And] | type[Or], parts: list[Node | None]) -> Node | None:
    kept = tuple(p for p in parts if p is not None)
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else kind(kept)


def parse(query: str) -> Node | None:
    """The tree of ``query``, or None for a query without any term (which matches every asset).

    Raises SearchQueryError, naming the character where the problem is, for a query that is too long, nests too
    deep, has too many terms, unbalanced parentheses or quotes, an operator without its terms, an unknown field or a
    bad field value.
    """
    if len(query) > MAX_QUERY_CHARS:
        raise SearchQueryError(f"a query has at most {MAX_QUERY_CHARS} characters", position=MAX_QUERY_CHARS)
    if "\x00" in query:
        raise SearchQueryError("a query cannot contain a NUL character", position=query.index("\x00"))
    return _Parser(query).parse()


# -- terms ------------------------------------------------------------------------------------------------------------


def _term(token: _Token) -> Node | None:
    match = FIELD_PATTERN.match(token.text)
    if match is None or (token.quoted is not None and match.end() != len(token.text)):
        text = token.text if token.quoted is None else f"{token.text}{token.quoted}{token.suffix}"
        return Text(text) if WORD_CHARS.search(text) else None
    name, separator = match.group(1).lower(), match.group(2)
    try:
        field = Field(name)
    except ValueError:
        # Not one of ours (10:30, http://..., body:*): plain text, like any other word.
        text = token.text if token.quoted is None else f"{token.text}{token.quoted}{token.suffix}"
        return Text(text) if WORD_CHARS.search(text) else None
    value_position = token.position + match.end()
    quoted = token.quoted is not None
    if quoted and separator != ":":
        raise SearchQueryError(f"{name}{separator} needs a number", position=value_position)
    value = token.quoted if token.quoted is not None else token.text[match.end() :]
    return _FIELD_PARSERS[field](
        _Value(field=field, separator=separator, text=value, quoted=quoted, suffix=token.suffix, at=value_position)
    )


@dataclass(frozen=True)
class _Value:
    field: Field
    separator: str
    text: str
    quoted: bool
    suffix: str
    at: int

    def fail(self, message: str) -> SearchQueryError:
        return SearchQueryError(f"{self.field.value}: {message}", position=self.at)

    def only_colon(self) -> None:
        if self.separator != ":":
            raise self.fail(f"use {self.field.value}:value (comparisons are for nsfw, faces and people)")
        if self.suffix:
            raise self.fail(f"unexpected {self.suffix!r} after the quoted value")
        if not self.text.strip():
            raise self.fail("a value is missing")
        if len(self.text) > MAX_VALUE_CHARS:
            raise self.fail(f"a value has at most {MAX_VALUE_CHARS} characters")


def _tag(value: _Value) -> Tag:
    if value.separator != ":":
        raise value.fail("use tag:name, tag:prefix/* or tag:name>=0.6")
    text, suffix = value.text, value.suffix
    threshold: tuple[str, str] | None = None
    if value.quoted:
        if suffix:
            found = SCORE_SUFFIX.fullmatch(suffix)
            if found is None:
                raise value.fail(f"{suffix!r} is not a score threshold; use >=0.6 or >0.6")
            threshold = (found.group(1), found.group(2))
    else:
        found = SCORE_SUFFIX.search(text)
        if found is not None:
            threshold = (found.group(1), found.group(2))
            text = text[: found.start()]
        elif re.search(r"[<>]", text):
            raise value.fail("a score threshold is written >=0.6 or >0.6, a number from 0 to 1")
    text = text.strip()
    if not text:
        raise value.fail("a tag is missing")
    if len(text) > MAX_VALUE_CHARS:
        raise value.fail(f"a tag has at most {MAX_VALUE_CHARS} characters")
    if "*" in text[:-1] or text == "*":
        raise value.fail("use a whole tag (animal/cat) or a prefix with one * at the end (animal/*)")
    min_score, inclusive = None, True
    if threshold is not None:
        min_score = float(threshold[1])
        inclusive = threshold[0] == ">="
        if not 0.0 <= min_score <= 1.0:
            raise value.fail("a score threshold is a number from 0 to 1")
    prefix = text.endswith("*")
    return Tag(tag=text[:-1] if prefix else text, prefix=prefix, min_score=min_score, inclusive=inclusive)


def _choices(value: _Value, enum: type[MediaKind] | type[AssetStatus]) -> tuple[str, ...]:
    value.only_colon()
    picked: list[str] = []
    for part in value.text.lower().split("|"):
        try:
            picked.append(enum(part.strip()).value)
        except ValueError:
            allowed = ", ".join(member.value for member in enum)
            raise value.fail(f"unknown value {part.strip()[:40]!r}; use one of {allowed}") from None
    return tuple(dict.fromkeys(picked))


def _kind(value: _Value) -> Kind:
    return Kind(tuple(MediaKind(v) for v in _choices(value, MediaKind)))


def _status(value: _Value) -> Status:
    return Status(tuple(AssetStatus(v) for v in _choices(value, AssetStatus)))


def _day(value: _Value, text: str) -> date | None:
    text = text.strip()
    if not text:
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise value.fail(f"{text[:40]!r} is not a day; use YYYY-MM-DD")


def _date(value: _Value) -> DateRange:
    value.only_colon()
    if ".." in value.text:
        first, _, last = value.text.partition("..")
        start, end = _day(value, first), _day(value, last)
        if start is None and end is None:
            raise value.fail("give at least one end of the range: 2024-05-01..2024-06-01")
        if start and end and start > end:
            raise value.fail(f"the range ends ({end}) before it starts ({start})")
        return DateRange(start, end)
    day = _day(value, value.text)
    return DateRange(day, day)


def _job(value: _Value) -> JobIs:
    value.only_colon()
    try:
        return JobIs(uuid.UUID(value.text.strip()))
    except ValueError:
        raise value.fail("not a job id") from None


def _name(value: _Value) -> NameContains:
    value.only_colon()
    return NameContains(value.text.strip())


def _person(value: _Value) -> PersonIs:
    value.only_colon()
    text = value.text.strip()
    if not value.quoted:
        try:
            return PersonIs(person_id=uuid.UUID(text))
        except ValueError:
            pass
    return PersonIs(name=text)


def _number(value: _Value, text: str, *, integer: bool) -> float:
    text = text.strip()
    pattern = r"\d+" if integer else r"\d+(?:\.\d*)?|\.\d+"
    if not re.fullmatch(pattern, text):
        kind = "a whole number" if integer else "a number from 0 to 1"
        raise value.fail(f"{text[:40]!r} is not {kind}")
    number = float(text)
    if not integer and number > 1.0:
        raise value.fail("a score is a number from 0 to 1")
    if integer and number > 10**6:
        raise value.fail("a count is at most 1000000")
    return number


def _range(value: _Value) -> NumberRange:
    if value.quoted or value.suffix:
        raise value.fail("a number is not quoted")
    field: NumberField = value.field.value  # type: ignore[assignment]
    integer = field != "nsfw"
    if value.separator != ":":
        number = _number(value, value.text, integer=integer)
        return {
            ">=": NumberRange(field, low=number),
            ">": NumberRange(field, low=number, low_inclusive=False),
            "<=": NumberRange(field, high=number),
            "<": NumberRange(field, high=number, high_inclusive=False),
        }[value.separator]
    if ".." in value.text:
        first, _, last = value.text.partition("..")
        low = _number(value, first, integer=integer) if first.strip() else None
        high = _number(value, last, integer=integer) if last.strip() else None
        if low is None and high is None:
            raise value.fail("give at least one end of the range: 0.2..0.8")
        if low is not None and high is not None and low > high:
            raise value.fail("the range ends before it starts")
        return NumberRange(field, low=low, high=high)
    if not integer:
        raise value.fail("use a range (nsfw:0.2..0.8) or a comparison (nsfw>=0.5, nsfw<0.1)")
    number = _number(value, value.text, integer=True)
    return NumberRange(field, low=number, high=number)


_FIELD_PARSERS: dict[Field, Callable[[_Value], Node]] = {
    Field.TAG: _tag,
    Field.KIND: _kind,
    Field.STATUS: _status,
    Field.DATE: _date,
    Field.JOB: _job,
    Field.NAME: _name,
    Field.PERSON: _person,
    Field.NSFW: _range,
    Field.FACES: _range,
    Field.PEOPLE: _range,
}


# -- reading a tree ---------------------------------------------------------------------------------------------------


def positive_terms(node: Node | None) -> list[Term]:
    """The terms that an asset is found *by* (not under a NOT), in query order, for ranking."""
    if node is None:
        return []
    if isinstance(node, Not):
        return []
    if isinstance(node, And | Or):
        return [term for child in node.children for term in positive_terms(child)]
    return [node]
