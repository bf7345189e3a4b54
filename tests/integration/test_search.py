"""Search on SQLite (FTS5) and PostgreSQL (tsvector + GIN): the query language over a small library of assets with
tags, transcripts, faces of named people, NSFW scores and person counts; ranking; pages; tenant isolation; and the
same search through the REST API, the CLI and the gallery page.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, text, update
from typer.testing import CliRunner

from gpu_worker.contract import AnalyzerOutput, BatchResult, ItemResult, TagScore
from orchestrator import cli
from orchestrator.api.main import create_app
from orchestrator.batching import claim_batch, complete_batch, plan_batches
from orchestrator.db.models import Asset, Face, Job, Person, Result, ResultTag, SearchDocument
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, JobStatus
from orchestrator.jobs import create_job, seal_job
from orchestrator.search.documents import rebuild_documents, refresh_documents
from orchestrator.search.engine import MAX_OFFSET, SearchPage, search
from orchestrator.search.query import SearchQueryError
from orchestrator.settings import get_settings
from tests.fixtures.deployment import free_port
from tests.fixtures.factories import TenantWithKey, make_tenant
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.web import signed_in_client

pytestmark = pytest.mark.integration

DAY0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Spec:
    """One asset of the library and what its results say."""

    name: str
    kind: str = "image"
    status: AssetStatus = AssetStatus.DONE
    tags: tuple[tuple[str, float], ...] = ()
    transcript: str | None = None
    nsfw: float | None = None
    faces: int | None = None
    people: int | None = None
    named_faces: tuple[str, ...] = ()


LIBRARY = {
    "sofa": Spec(
        "cat_on_sofa.jpg", tags=(("animal/cat", 0.9), ("scene/living_room", 0.6)), nsfw=0.05, faces=0, people=0
    ),
    "park": Spec("dog-park.jpg", tags=(("animal/dog", 0.8), ("scene/park", 0.7)), nsfw=0.3, faces=2, people=3),
    "interview": Spec(
        "interview.mp4",
        kind="video",
        tags=(("scene/office", 0.5),),
        transcript="The quick brown fox jumps over the lazy dog",
        faces=1,
        people=1,
        named_faces=("Alice",),
    ),
    "beach": Spec(
        "beach_party.jpg",
        tags=(("scene/beach", 0.95), ("animal/cat", 0.4)),
        nsfw=0.85,
        faces=3,
        people=5,
        named_faces=("Alice", "Bob"),
    ),
    "podcast": Spec("podcast.wav", kind="audio", status=AssetStatus.FAILED, transcript="cats and kittens talk"),
}


@dataclass
class Library:
    """Tenant A's assets by key (created one day apart, in LIBRARY order), its people, and tenant B."""

    a: TenantWithKey
    b: TenantWithKey
    ids: dict[str, uuid.UUID]
    people: dict[str, uuid.UUID]
    jobs: list[uuid.UUID]
    b_asset: uuid.UUID

    def keys(self, page: SearchPage) -> list[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id.get(hit.item.id, f"foreign:{hit.item.id}") for hit in page.hits]


def _add(
    session: Any, *, tenant_id: uuid.UUID, job_id: uuid.UUID, spec: Spec, at: datetime, people: dict[str, uuid.UUID]
) -> uuid.UUID:
    asset = Asset(
        tenant_id=tenant_id,
        job_id=job_id,
        sha256=uuid.uuid4().hex * 2,
        media_kind=spec.kind,
        mime_type=f"{spec.kind}/x",
        size_bytes=10,
        storage_key=f"k/{uuid.uuid4().hex}",
        original_name=spec.name,
        status=spec.status,
        created_at=at,
        updated_at=at,
    )
    session.add(asset)
    session.flush()

    def result(analyzer: str, payload: dict[str, Any]) -> None:
        session.add(Result(tenant_id=tenant_id, asset_id=asset.id, analyzer=analyzer, model_id="m", payload=payload))

    for tag, score in spec.tags:
        session.add(ResultTag(tenant_id=tenant_id, asset_id=asset.id, analyzer="clip", tag=tag, score=score))
    if spec.nsfw is not None:
        result("clip", {"nsfw_score": spec.nsfw})
    if spec.transcript is not None:
        result("transcribe", {"text": spec.transcript, "segments": []})
    if spec.faces is not None:
        result("faces", {"face_count": spec.faces, "faces": []})
    if spec.people is not None:
        result("objects", {"person_count": spec.people, "counts": {"person": spec.people}})
    for index, person in enumerate(spec.named_faces):
        if person not in people:
            row = Person(tenant_id=tenant_id, name=person, face_count=0)
            session.add(row)
            session.flush()
            people[person] = row.id
        session.add(
            Face(tenant_id=tenant_id, asset_id=asset.id, face_index=index, box=[0, 0, 1, 1], person_id=people[person])
        )
    session.flush()
    return asset.id


@pytest.fixture
def library(orch_env: OrchestratorEnv) -> Library:
    """Tenant A's five assets over five days in two jobs; tenant B's cat with a person also called Alice."""
    a, b = make_tenant("tenant-a"), make_tenant("tenant-b")
    ids: dict[str, uuid.UUID] = {}
    people: dict[str, uuid.UUID] = {}
    with session_scope() as session:
        jobs = [Job(tenant_id=a.id, name=n, status=JobStatus.DONE, analyzers=["clip"]) for n in ("first", "second")]
        b_job = Job(tenant_id=b.id, name="b", status=JobStatus.DONE, analyzers=["clip"])
        session.add_all([*jobs, b_job])
        session.flush()
        for day, (key, spec) in enumerate(LIBRARY.items()):
            ids[key] = _add(
                session,
                tenant_id=a.id,
                job_id=jobs[0 if day < 3 else 1].id,
                spec=spec,
                at=DAY0 + timedelta(days=day),
                people=people,
            )
        b_spec = Spec(
            "cat_b.jpg", tags=(("animal/cat", 0.99),), transcript="cats", faces=4, people=4, named_faces=("Alice",)
        )
        b_asset = _add(session, tenant_id=b.id, job_id=b_job.id, spec=b_spec, at=DAY0, people={})
        refresh_documents(session, tenant_id=a.id, asset_ids=list(ids.values()))
        refresh_documents(session, tenant_id=b.id, asset_ids=[b_asset])
        job_ids = [j.id for j in jobs]
    return Library(a=a, b=b, ids=ids, people=people, jobs=job_ids, b_asset=b_asset)


def _search(library: Library, query: str, *, tenant: TenantWithKey | None = None, **kwargs: Any) -> SearchPage:
    with session_scope() as session:
        return search(session, tenant_id=(tenant or library.a).id, query=query, **kwargs)


def _found(library: Library, query: str) -> set[str]:
    return set(library.keys(_search(library, query, limit=200)))


# -- tags and boolean logic --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("tag:animal/cat", {"sofa", "beach"}),
        ("tag:animal/*", {"sofa", "park", "beach"}),
        ("tag:ANIMAL/*", set()),  # tags are exact strings
        ("tag:animal/cat>=0.5", {"sofa"}),
        ("tag:animal/cat>=0.9", {"sofa"}),
        ("tag:animal/cat>0.9", set()),
        ('tag:"scene/living_room"', {"sofa"}),
        ("tag:animal/cat OR tag:animal/dog", {"sofa", "park", "beach"}),
        ("tag:animal/* -tag:animal/dog", {"sofa", "beach"}),
        ("tag:animal/* AND NOT tag:animal/dog", {"sofa", "beach"}),
        ("NOT tag:animal/*", {"interview", "podcast"}),
        ("tag:animal/dog OR tag:animal/cat kind:video", {"park"}),  # AND binds tighter than OR
        ("(tag:animal/dog OR tag:animal/cat) kind:image", {"sofa", "park", "beach"}),
        ("tag:scene/* -(tag:scene/beach OR tag:scene/park)", {"sofa", "interview"}),
        ("tag:animal/% OR tag:animal/_at", set()),  # LIKE wildcards are plain characters
    ],
)
def test_tag_terms_and_boolean_logic(library: Library, query: str, expected: set[str]) -> None:
    assert _found(library, query) == expected


# -- full text ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("cat", {"sofa", "beach", "podcast"}),  # tag words, and "cats" in a transcript by its stem
        ("animal", {"sofa", "park", "beach"}),  # the category of animal/cat is a word too
        ("living room", {"sofa"}),  # underscores of scene/living_room are spaces
        ("jumping", {"interview"}),  # the transcript says "jumps"
        ('"quick brown fox"', {"interview"}),
        ('"fox quick brown"', set()),  # a phrase keeps its order
        ("sofa", {"sofa"}),  # a word of the file name
        ("podcast", {"podcast"}),
        ("kittens -tag:animal/*", {"podcast"}),
        ("cat OR dog", {"sofa", "beach", "podcast", "park", "interview"}),
        ("the cat", {"sofa", "beach", "podcast"}),  # "the" is no reason to find nothing
        ("unicorn", set()),
    ],
)
def test_full_text_over_tag_words_transcripts_and_file_names(library: Library, query: str, expected: set[str]) -> None:
    assert _found(library, query) == expected


@pytest.mark.parametrize(
    "query",
    [
        '"x" OR 1=1 --',
        "'; DROP TABLE assets; --",
        '"body:* NEAR("',
        "body:* NEAR",
        "NEAR(cat dog) cat",
        "cat* ^dog {col}: AND",
        'cat "a""b"',
        "x' OR '1'='1",
    ],
)
def test_hostile_queries_are_only_text(library: Library, query: str) -> None:
    try:
        page = _search(library, query)
    except SearchQueryError as exc:
        # Only a query that breaks our own grammar (an operator without its term) is refused, with a position.
        assert exc.code == "invalid_query" and exc.position >= 0
    else:
        assert all(hit.item.id in library.ids.values() for hit in page.hits)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Asset)) == len(LIBRARY) + 1


def test_an_unclosed_parenthesis_is_a_clear_error_not_fts_syntax(library: Library) -> None:
    with pytest.raises(SearchQueryError) as caught:
        _search(library, "body:* NEAR(")

    assert caught.value.code == "invalid_query"
    assert "not closed" in caught.value.message and "character 12" in caught.value.message


# -- fields ------------------------------------------------------------------------------------------------------------


def test_fields_kind_status_date_job_and_name(library: Library) -> None:
    first, second = (str(j) for j in library.jobs)

    assert _found(library, "kind:audio") == {"podcast"}
    assert _found(library, "kind:image|video") == {"sofa", "park", "interview", "beach"}
    assert _found(library, "status:failed") == {"podcast"}
    assert _found(library, "-status:done") == {"podcast"}
    assert _found(library, "date:2026-05-02") == {"park"}
    assert _found(library, "date:2026-05-02..2026-05-03") == {"park", "interview"}
    assert _found(library, "date:2026-05-04..") == {"beach", "podcast"}
    assert _found(library, "date:..2026-05-01") == {"sofa"}
    assert _found(library, f"job:{first}") == {"sofa", "park", "interview"}
    assert _found(library, f"job:{second} kind:image") == {"beach"}
    assert _found(library, "name:SOFA") == {"sofa"}
    assert _found(library, 'name:"_on_"') == {"sofa"}
    assert _found(library, "name:%") == set()


def test_people_by_name_in_any_case_or_by_id_within_the_tenant(library: Library) -> None:
    assert _found(library, 'person:"alice"') == {"interview", "beach"}
    assert _found(library, "person:Bob") == {"beach"}
    assert _found(library, f"person:{library.people['Bob']}") == {"beach"}
    assert _found(library, 'person:"Alice" -person:"Bob"') == {"interview"}
    assert _found(library, "person:nobody") == set()


def test_numbers_nsfw_faces_and_people(library: Library) -> None:
    assert _found(library, "nsfw>=0.5") == {"beach"}
    assert _found(library, "nsfw:0.2..0.9") == {"park", "beach"}
    assert _found(library, "nsfw<0.1") == {"sofa"}
    assert _found(library, "faces>=2") == {"park", "beach"}
    assert _found(library, "faces:0") == {"sofa"}
    assert _found(library, "faces:1..2") == {"park", "interview"}
    assert _found(library, "people>=2") == {"park", "beach"}
    assert _found(library, "people<1") == {"sofa"}


def test_a_payload_number_of_the_wrong_type_is_skipped_not_an_error(library: Library) -> None:
    with session_scope() as session:
        row = session.scalar(select(Result).where(Result.asset_id == library.ids["beach"], Result.analyzer == "faces"))
        assert row is not None
        row.payload = {"face_count": "many"}

    assert _found(library, "faces>=2") == {"park"}
    assert _found(library, "nsfw>=0.5") == {"beach"}


# -- ranking and pages -------------------------------------------------------------------------------------------------


def test_tag_terms_alone_rank_by_the_sum_of_matched_scores(library: Library) -> None:
    page = _search(library, "tag:animal/* OR tag:scene/beach")

    assert page.ranked_by == "tags"
    assert library.keys(page) == ["beach", "sofa", "park"]  # 0.95 + 0.4, 0.9, 0.8
    assert [hit.score for hit in page.hits] == [1.35, 0.9, 0.8]


def test_words_rank_by_relevance_plus_matched_tag_scores(library: Library) -> None:
    with session_scope() as session:
        # A document that says "cat" three times is more about cats than one that says it once.
        session.add(
            ResultTag(tenant_id=library.a.id, asset_id=library.ids["podcast"], analyzer="x", tag="cat/cat", score=0.1)
        )
        refresh_documents(session, tenant_id=library.a.id, asset_ids=[library.ids["podcast"]])

    page = _search(library, "cat")
    boosted = _search(library, "cat tag:animal/cat")

    assert page.ranked_by == "relevance"
    assert library.keys(page)[0] == "podcast"
    scores = [hit.score or 0.0 for hit in page.hits]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    assert set(library.keys(boosted)) == {"sofa", "beach"}
    by_key = dict(zip(library.keys(boosted), [h.score or 0.0 for h in boosted.hits], strict=True))
    plain = dict(zip(library.keys(page), scores, strict=True))
    assert by_key["sofa"] == pytest.approx(plain["sofa"] + 0.9, abs=1e-3)


def test_without_ranking_terms_newest_first(library: Library) -> None:
    page = _search(library, "kind:image")

    assert page.ranked_by == "newest"
    assert library.keys(page) == ["beach", "park", "sofa"]
    assert all(hit.score is None for hit in page.hits)


def test_offset_pages_are_stable_without_gaps_or_repeats(library: Library) -> None:
    with session_scope() as session:
        # Equal scores and equal times: only the asset id orders them.
        session.execute(update(ResultTag).where(ResultTag.tenant_id == library.a.id).values(score=0.5))
        session.execute(update(Asset).where(Asset.tenant_id == library.a.id).values(created_at=DAY0))

    for query in ("", "tag:scene/* OR tag:animal/*", "cat OR dog OR fox"):
        whole = library.keys(_search(library, query, limit=200))
        walked: list[str] = []
        offset = 0
        while True:
            page = _search(library, query, offset=offset, limit=2)
            assert page.total == len(whole)
            walked += library.keys(page)
            if page.next_offset is None:
                break
            offset = page.next_offset
        assert walked == whole, query
        assert len(set(walked)) == len(walked)


def test_an_offset_past_the_deepest_page_is_refused(library: Library) -> None:
    with pytest.raises(SearchQueryError):
        _search(library, "", offset=MAX_OFFSET + 1)


# -- tenants -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query", ["", "cat", "cats", "tag:animal/cat", 'person:"Alice"', "faces>=1", "people>=1", "name:cat", "kind:image"]
)
def test_a_tenant_never_finds_another_tenants_assets(library: Library, query: str) -> None:
    a_found = set(hit.item.id for hit in _search(library, query, limit=200).hits)
    b_found = set(hit.item.id for hit in _search(library, query, tenant=library.b, limit=200).hits)

    assert library.b_asset not in a_found
    assert b_found <= {library.b_asset}


def test_person_ids_of_another_tenant_find_nothing(library: Library) -> None:
    page = _search(library, f"person:{library.people['Alice']}", tenant=library.b)

    assert page.hits == [] and page.total == 0


# -- documents follow the results ------------------------------------------------------------------------------------


def test_complete_batch_writes_documents_and_reanalysis_or_rename_replaces_them(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        job = create_job(session, tenant_id=tenant.id, analyzers=["clip"], default_analyzers=["clip"])
        asset = Asset(
            tenant_id=tenant.id,
            job_id=job.id,
            sha256="ab" * 32,
            media_kind="video",
            mime_type="video/mp4",
            size_bytes=100,
            storage_key="k/ab",
            original_name="holiday_clip.mp4",
            status=AssetStatus.PREPARED,
        )
        session.add(asset)
        session.flush()
        asset_id = asset.id
        seal_job(session, tenant_id=tenant.id, job_id=job.id)
        batch_ids = plan_batches(session, job_id=job.id, batch_size=4, max_attempts=3)
    assert batch_ids
    with session_scope() as session:
        claim = claim_batch(session, batch_id=batch_ids[0], worker_id="w", lease_s=60)
    assert claim is not None
    result = BatchResult(
        batch_id=str(batch_ids[0]),
        items=[
            ItemResult(
                asset_id=str(asset_id),
                outputs={
                    "clip": AnalyzerOutput(model_id="c", tags=[TagScore(tag="vehicle/red_car", score=0.8)]),
                    "transcribe": AnalyzerOutput(model_id="w", payload={"text": "Engines roaring at the racetrack"}),
                },
            )
        ],
    )
    with session_scope() as session:
        assert complete_batch(session, claim=claim, result=result, backend="in_process")

    def found(query: str) -> bool:
        with session_scope() as session:
            return [h.item.id for h in search(session, tenant_id=tenant.id, query=query).hits] == [asset_id]

    assert found("red car") and found("vehicle") and found("engine roar") and found("holiday")

    with session_scope() as session:
        session.execute(delete(ResultTag).where(ResultTag.asset_id == asset_id))
        session.add(ResultTag(tenant_id=tenant.id, asset_id=asset_id, analyzer="clip", tag="animal/horse", score=0.7))
        row = session.get(Asset, asset_id)
        assert row is not None
        row.original_name = "derby.mp4"
        session.flush()
        refresh_documents(session, tenant_id=tenant.id, asset_ids=[asset_id])

    assert found("horse") and found("derby")
    assert not found("vehicle") and not found("holiday")
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(SearchDocument)) == 1
        session.execute(delete(SearchDocument))
        assert rebuild_documents(session, tenant_id=tenant.id) == 1
    assert found("horse")


def test_the_postgresql_text_condition_uses_the_gin_index(orch_env: OrchestratorEnv) -> None:
    with session_scope() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("an expression index of PostgreSQL")
        from orchestrator.search.compile import tsquery, tsvector
        from orchestrator.search.query import Text

        statement = select(SearchDocument.asset_id).where(tsvector().op("@@")(tsquery(Text("cat"))))
        compiled = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(row[0] for row in session.execute(text(f"EXPLAIN {compiled}")))
    assert "ix_search_documents_body_fts" in plan, plan


# -- REST, CLI and the gallery page ----------------------------------------------------------------------------------


@pytest.fixture
def api(library: Library) -> Iterator[TestClient]:
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        yield client


def test_rest_search_answers_ranked_cards_and_422_for_a_bad_query(library: Library, api: TestClient) -> None:
    answer = api.get("/api/v1/search", params={"q": "tag:animal/*", "limit": 2}, headers=library.a.headers)
    bad = api.get("/api/v1/search", params={"q": "cat AND"}, headers=library.a.headers)
    b_answer = api.get("/api/v1/search", params={"q": "cat"}, headers=library.b.headers)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [d["id"] for d in body["data"]] == [str(library.ids["sofa"]), str(library.ids["park"])]
    assert body["count"] == 3 and body["next_offset"] == 2 and body["ranked_by"] == "tags"
    assert body["data"][0]["score"] == 0.9 and body["data"][0]["tags"][0]["tag"] == "animal/cat"
    assert bad.status_code == 422
    assert bad.json()["detail"]["code"] == "invalid_query" and "character 5" in bad.json()["detail"]["message"]
    assert [d["id"] for d in b_answer.json()["data"]] == [str(library.b_asset)]


def test_cli_search_prints_a_table_and_json(library: Library) -> None:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                threading.Event().wait(0.05)
        runner = CliRunner()
        args = ["--api-url", url, "--api-key", library.a.key]
        table = runner.invoke(cli.app, ["search", "jumping OR tag:animal/dog", *args])
        as_json = runner.invoke(cli.app, ["search", "tag:animal/*", "--limit", "1", "--json", *args])
        bad = runner.invoke(cli.app, ["search", "(cat", *args])
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    assert table.exit_code == 0, table.output
    assert "interview.mp4" in table.output and "dog-park.jpg" in table.output
    assert str(library.ids["interview"]) in table.output and "relevance" in table.output
    assert as_json.exit_code == 0, as_json.output
    assert '"count": 3' in as_json.output and str(library.ids["sofa"]) in as_json.output
    assert bad.exit_code != 0 and "invalid_query" in bad.output


def test_gallery_page_shows_ranked_results_for_q_and_names_a_bad_query(library: Library) -> None:
    get_settings.cache_clear()
    with signed_in_client(create_app(), tenant_name="tenant-a") as client:
        found = client.get("/gallery", params={"q": "tag:animal/*", "kind": "image"})
        narrowed = client.get("/gallery", params={"q": "tag:animal/*", "kind": "image", "job": str(library.jobs[1])})
        paged = client.get("/gallery", params={"q": "cat OR dog", "offset": "abc"})
        bad = client.get("/gallery", params={"q": 'tag:"open'})

    assert found.status_code == 200
    names = re.findall(r'class="asset-name" title="([^"]+)"', found.text)
    assert names == ["cat_on_sofa.jpg", "dog-park.jpg", "beach_party.jpg"]
    assert "3 assets match" in found.text and 'title="score">0.9</span>' in found.text
    assert re.findall(r'class="asset-name" title="([^"]+)"', narrowed.text) == ["beach_party.jpg"]
    assert paged.status_code == 200 and "asset-name" in paged.text
    assert bad.status_code == 200
    assert 'id="error-q"' in bad.text and "not closed" in bad.text
    assert 'value="tag:&#34;open"' in bad.text or 'value="tag:&quot;open"' in bad.text
