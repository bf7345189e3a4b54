"""The search query language: what each query parses to, operator precedence, quoting, and the errors (with the
character where the problem is) and limits that keep a query cheap."""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_worker.contract import MediaKind
from orchestrator.enums import AssetStatus
from orchestrator.search.compile import fts5_query
from orchestrator.search.documents import document_body, tag_words
from orchestrator.search.query import (
    MAX_DEPTH,
    MAX_QUERY_CHARS,
    MAX_TERMS,
    And,
    DateRange,
    JobIs,
    Kind,
    NameContains,
    Not,
    NumberRange,
    Or,
    PersonIs,
    SearchQueryError,
    Status,
    Tag,
    Text,
    parse,
    positive_terms,
)

CAT, DOG, BIRD = Text("cat"), Text("dog"), Text("bird")


@pytest.mark.parametrize(
    ("query", "tree"),
    [
        ("", None),
        ("   ", None),
        ("cat", CAT),
        ("cat dog", And((CAT, DOG))),
        ("cat AND dog", And((CAT, DOG))),
        ("cat OR dog", Or((CAT, DOG))),
        ("cat or dog", And((CAT, Text("or"), DOG))),  # operators are capitals; "or" is a word
        ("NOT cat", Not(CAT)),
        ("-cat", Not(CAT)),
        ("cat -dog", And((CAT, Not(DOG)))),
        ("cat - dog", And((CAT, DOG))),  # a lone dash is no word and no operator
        ("well-known", Text("well-known")),
        ("cat dog OR bird", Or((And((CAT, DOG)), BIRD))),
        ("cat OR dog bird", Or((CAT, And((DOG, BIRD))))),
        ("NOT cat OR dog", Or((Not(CAT), DOG))),
        ("NOT cat dog", And((Not(CAT), DOG))),
        ("(cat OR dog) bird", And((Or((CAT, DOG)), BIRD))),
        ("-(cat OR dog)", Not(Or((CAT, DOG)))),
        ("NOT NOT cat", Not(Not(CAT))),
        ("((cat))", CAT),
        ('"red car"', Text("red car", phrase=True)),
        ('"red car" -"blue car"', And((Text("red car", phrase=True), Not(Text("blue car", phrase=True))))),
        ('""', None),
        ('"x" OR 1=1 --', Or((Text("x", phrase=True), Text("1=1")))),
        ("body:* NEAR", And((Text("body:*"), Text("NEAR")))),
        ("10:30", Text("10:30")),
    ],
)
def test_boolean_structure_and_precedence(query: str, tree: object) -> None:
    assert parse(query) == tree


@pytest.mark.parametrize(
    ("query", "tree"),
    [
        ("tag:animal/cat", Tag("animal/cat")),
        ("TAG:animal/cat", Tag("animal/cat")),
        ("tag:animal/*", Tag("animal/", prefix=True)),
        ("tag:animal/cat>=0.6", Tag("animal/cat", min_score=0.6)),
        ("tag:animal/cat>0.6", Tag("animal/cat", min_score=0.6, inclusive=False)),
        ("tag:animal/*>=.5", Tag("animal/", prefix=True, min_score=0.5)),
        ('tag:"scene/living room"', Tag("scene/living room")),
        ('tag:"scene/living room">=0.25', Tag("scene/living room", min_score=0.25)),
        ('tag:"scene/*"', Tag("scene/", prefix=True)),
        ("kind:image", Kind((MediaKind.IMAGE,))),
        ("kind:Image|VIDEO|image", Kind((MediaKind.IMAGE, MediaKind.VIDEO))),
        ("status:failed|done", Status((AssetStatus.FAILED, AssetStatus.DONE))),
        ("date:2024-05-01", DateRange(date(2024, 5, 1), date(2024, 5, 1))),
        ("date:2024-05-01..2024-06-01", DateRange(date(2024, 5, 1), date(2024, 6, 1))),
        ("date:2024-05-01..", DateRange(date(2024, 5, 1), None)),
        ("date:..2024-06-01", DateRange(None, date(2024, 6, 1))),
        ("name:holiday", NameContains("holiday")),
        ('name:"summer 2024"', NameContains("summer 2024")),
        ('person:"Alice"', PersonIs(name="Alice")),
        ("person:alice", PersonIs(name="alice")),
        ("nsfw:0.2..0.8", NumberRange("nsfw", low=0.2, high=0.8)),
        ("nsfw>=0.5", NumberRange("nsfw", low=0.5)),
        ("nsfw>0.5", NumberRange("nsfw", low=0.5, low_inclusive=False)),
        ("nsfw<0.1", NumberRange("nsfw", high=0.1, high_inclusive=False)),
        ("nsfw<=1", NumberRange("nsfw", high=1.0)),
        ("faces>=2", NumberRange("faces", low=2)),
        ("faces:0", NumberRange("faces", low=0, high=0)),
        ("faces:1..3", NumberRange("faces", low=1, high=3)),
        ("people>=2", NumberRange("people", low=2)),
        ("people:..4", NumberRange("people", high=4)),
    ],
)
def test_fields(query: str, tree: object) -> None:
    assert parse(query) == tree


def test_ids_of_jobs_and_people() -> None:
    some = uuid.uuid4()

    assert parse(f"job:{some}") == JobIs(some)
    assert parse(f"person:{some}") == PersonIs(person_id=some)
    assert parse(f'person:"{some}"') == PersonIs(name=str(some))  # quoted: a name, even one that looks like an id


def test_fields_combine_with_operators_and_text() -> None:
    tree = parse('tag:animal/* -kind:video ("red car" OR person:"Bob") faces>=1')

    assert tree == And(
        (
            Tag("animal/", prefix=True),
            Not(Kind((MediaKind.VIDEO,))),
            Or((Text("red car", phrase=True), PersonIs(name="Bob"))),
            NumberRange("faces", low=1),
        )
    )
    assert positive_terms(tree) == [
        Tag("animal/", prefix=True),
        Text("red car", phrase=True),
        PersonIs(name="Bob"),
        NumberRange("faces", low=1),
    ]


@pytest.mark.parametrize(
    ("query", "message", "position"),
    [
        ('"red car', "quote", 0),
        ('cat tag:"open', "quote", 8),
        ("(cat", "not closed", 0),
        ("cat)", "without a matching", 3),
        ("()", "empty parentheses", 0),
        ("cat AND", "AND needs a term after it", 4),
        ("AND cat", "AND needs a term before it", 0),
        ("cat OR", "OR needs a term after it", 4),
        ("OR cat", "OR needs a term before it", 0),
        ("cat OR OR dog", "OR needs a term before it", 7),
        ("NOT", "NOT needs a term after it", 0),
        ("cat (NOT)", "NOT needs a term after it", 5),
        ("tag:", "a tag is missing", 4),
        ("tag:*", "prefix", 4),
        ("tag:an*imal", "prefix", 4),
        ("tag:animal/cat>=1.5", "from 0 to 1", 4),
        ("tag:animal/cat<0.5", "threshold", 4),
        ("tag>=0.5", "tag:name", 5),
        ('tag:"a b"x', "not a score threshold", 4),
        ("kind:photo", "unknown value 'photo'; use one of image, video, audio", 5),
        ("kind:", "a value is missing", 5),
        ("status:finished", "use one of uploaded", 7),
        ("kind>=2", "comparisons are for nsfw", 6),
        ("date:2024-13-01", "not a day", 5),
        ("date:yesterday", "not a day", 5),
        ("date:2024-06-01..2024-05-01", "ends", 5),
        ("date:..", "at least one end", 5),
        ("job:42", "not a job id", 4),
        ("nsfw:0.5", "use a range", 5),
        ("nsfw>=high", "not a number from 0 to 1", 6),
        ("nsfw>=2", "from 0 to 1", 6),
        ("nsfw:0.8..0.2", "ends before it starts", 5),
        ("faces>=1.5", "not a whole number", 7),
        ("faces>=-1", "not a whole number", 7),
        ('faces:"2"', "not quoted", 6),
        ('person>="Al"', "use person:value", 8),
        ("cat \x00", "NUL", 4),
    ],
)
def test_errors_say_what_is_wrong_and_where(query: str, message: str, position: int) -> None:
    with pytest.raises(SearchQueryError) as caught:
        parse(query)

    assert caught.value.code == "invalid_query"
    assert message in caught.value.message
    assert caught.value.position == position
    assert f"(at character {position + 1})" in caught.value.message


def test_limits_on_length_terms_and_depth() -> None:
    parse("x" * MAX_QUERY_CHARS)
    parse(" ".join(["cat"] * MAX_TERMS))
    parse("(" * (MAX_DEPTH - 1) + "cat" + ")" * (MAX_DEPTH - 1))

    with pytest.raises(SearchQueryError, match="at most 1000 characters"):
        parse("x" * (MAX_QUERY_CHARS + 1))
    with pytest.raises(SearchQueryError, match=f"at most {MAX_TERMS} terms"):
        parse(" ".join(["cat"] * (MAX_TERMS + 1)))
    with pytest.raises(SearchQueryError, match="nests at most"):
        parse("(" * (MAX_DEPTH + 1) + "cat" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(SearchQueryError, match="nests at most"):
        parse("NOT " * (MAX_DEPTH + 1) + "cat")
    with pytest.raises(SearchQueryError, match="nests at most"):
        parse("-" * 1 + "(" * MAX_DEPTH + "cat" + ")" * MAX_DEPTH)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_fails_with_a_query_error(query: str) -> None:
    try:
        parse(query)
    except SearchQueryError as exc:
        assert 0 <= exc.position <= len(query)


@pytest.mark.parametrize(
    ("text", "fts"),
    [
        (Text("cat"), '"cat"'),
        (Text("animal/cat"), '"animal cat"'),
        (Text('a"b NEAR(c'), '"a b NEAR c"'),
        (Text("body:*"), '"body"'),
        (Text("red car", phrase=True), '"red car"'),
        (Text("the"), None),  # a stop word, left out as PostgreSQL leaves it out
        (Text("=="), None),
    ],
)
def test_user_text_reaches_fts5_only_as_quoted_strings(text: Text, fts: str | None) -> None:
    assert fts5_query(text) == fts


def test_documents_hold_tag_words_file_name_words_and_the_transcript() -> None:
    body = document_body(
        name="IMG_2024-summer.jpg",
        tags=["animal/cat", "scene/living_room", "animal/cat", "person"],
        transcript="Hello there",
    )

    assert tag_words("scene/living_room") == "scene/living_room scene living room"
    assert tag_words("person") == "person"
    assert body.splitlines() == [
        "IMG_2024-summer.jpg IMG 2024 summer jpg",
        "animal/cat animal cat",
        "scene/living_room scene living room",
        "person",
        "Hello there",
    ]
