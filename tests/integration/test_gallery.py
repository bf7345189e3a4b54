"""The gallery on SQLite and PostgreSQL: a tenant's assets newest first, page by page with cursors, filtered by tag
(exact or prefix), media kind, status, creation day and job; tag facets; and the same query in the REST API.

Pages are read along the index ix_assets_tenant_created, so the thousandth page costs what the first does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, text

from gpu_worker.contract import MediaKind
from orchestrator.api.main import create_app
from orchestrator.db.models import Asset, Job, Result, ResultTag
from orchestrator.db.session import get_sessionmaker, session_scope
from orchestrator.enums import AssetStatus, JobStatus
from orchestrator.gallery import (
    Cursor,
    GalleryFilterError,
    GalleryFilters,
    gallery_page,
    page_query,
    parse_filters,
    tag_facets,
)
from orchestrator.settings import get_settings
from tests.fixtures.factories import TenantWithKey, make_tenant
from tests.fixtures.services import OrchestratorEnv

pytestmark = pytest.mark.integration

DAY0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Library:
    """A tenant's assets, newest first, with what each was given."""

    tenant: TenantWithKey
    job_ids: list[uuid.UUID]
    newest_first: list[uuid.UUID]


def _add_job(tenant_id: uuid.UUID, name: str) -> uuid.UUID:
    with session_scope() as session:
        job = Job(tenant_id=tenant_id, name=name, status=JobStatus.DONE, analyzers=["clip"])
        session.add(job)
        session.flush()
        return job.id


def _add_asset(
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    *,
    at: datetime,
    name: str,
    kind: str = "image",
    status: AssetStatus = AssetStatus.DONE,
    tags: dict[str, float] | None = None,
    nsfw: float | None = None,
) -> uuid.UUID:
    with session_scope() as session:
        asset = Asset(
            tenant_id=tenant_id,
            job_id=job_id,
            sha256=uuid.uuid4().hex * 2,
            media_kind=kind,
            mime_type=f"{kind}/x",
            size_bytes=10,
            storage_key=f"k/{uuid.uuid4().hex}",
            original_name=name,
            status=status,
            created_at=at,
            updated_at=at,
        )
        session.add(asset)
        session.flush()
        for tag, score in (tags or {}).items():
            session.add(ResultTag(tenant_id=tenant_id, asset_id=asset.id, analyzer="clip", tag=tag, score=score))
        if nsfw is not None:
            session.add(
                Result(
                    tenant_id=tenant_id, asset_id=asset.id, analyzer="clip", model_id="m", payload={"nsfw_score": nsfw}
                )
            )
        return asset.id


@pytest.fixture
def library(orch_env: OrchestratorEnv) -> Library:
    """Twelve assets over twelve days in two jobs: images, videos and audio; cats, dogs and beaches."""
    tenant = make_tenant()
    jobs = [_add_job(tenant.id, "first"), _add_job(tenant.id, "second")]
    ids = []
    for day in range(12):
        kind = ("image", "video", "audio")[day % 3]
        tags = {0: {"animal/cat": 0.9}, 1: {"animal/dog": 0.8}, 2: {"scene/beach": 0.7}}[day % 3]
        if day == 5:
            tags = {"animal/cat": 0.6, "scene/beach": 0.95, "a_b/odd": 0.5}
        ids.append(
            _add_asset(
                tenant.id,
                jobs[day // 6],
                at=DAY0 + timedelta(days=day),
                name=f"day-{day:02d}",
                kind=kind,
                status=AssetStatus.FAILED if day == 7 else AssetStatus.DONE,
                tags=tags,
                nsfw=0.9 if day == 4 else None,
            )
        )
    return Library(tenant=tenant, job_ids=jobs, newest_first=list(reversed(ids)))


def _names(page_items: list[object]) -> list[str]:
    return [item.name for item in page_items]  # type: ignore[attr-defined]


def _page(library: Library, **kwargs: object):  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return gallery_page(session, tenant_id=library.tenant.id, **kwargs)  # type: ignore[arg-type]


def test_pages_walk_newest_first_without_gaps_or_repeats_and_back(library: Library) -> None:
    first = _page(library, limit=5)
    second = _page(library, limit=5, cursor=first.older)
    third = _page(library, limit=5, cursor=second.older)
    back = _page(library, limit=5, cursor=third.newer, direction="newer")

    assert [i.id for i in first.items + second.items + third.items] == library.newest_first
    assert (first.total, first.newer, third.older) == (12, None, None)
    assert first.older and second.newer and second.older and third.newer
    assert [i.id for i in back.items] == [i.id for i in second.items]
    assert _page(library, limit=5, cursor=back.newer, direction="newer").items == first.items


def test_assets_with_the_same_timestamp_are_paged_by_id_without_losing_one(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    job = _add_job(tenant.id, "burst")
    ids = {_add_asset(tenant.id, job, at=DAY0, name=f"burst-{n}") for n in range(7)}
    library = Library(tenant=tenant, job_ids=[job], newest_first=[])

    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page = _page(library, limit=3, cursor=cursor)
        seen += [i.id for i in page.items]
        cursor = page.older
        if cursor is None:
            break

    assert len(seen) == 7 and set(seen) == ids


def test_tag_filter_matches_a_whole_tag_or_a_prefix_literally(library: Library) -> None:
    cats = _page(library, filters=GalleryFilters(tag="animal/cat"))
    animals = _page(library, filters=GalleryFilters(tag="animal/*"))
    odd = _page(library, filters=GalleryFilters(tag="a_b/*"))
    wildcard_is_literal = _page(library, filters=GalleryFilters(tag="a%/*"))

    assert _names(cats.items) == ["day-09", "day-06", "day-05", "day-03", "day-00"] and cats.total == 5
    assert animals.total == 9
    assert _names(odd.items) == ["day-05"]
    assert wildcard_is_literal.items == [], "% and _ in a prefix are not wildcards"


def test_kind_status_day_and_job_filters_combine(library: Library) -> None:
    videos = _page(library, filters=GalleryFilters(kind=MediaKind.VIDEO))
    failed = _page(library, filters=GalleryFilters(status=AssetStatus.FAILED))
    days = _page(
        library,
        filters=GalleryFilters(created_from=date(2026, 3, 3), created_to=date(2026, 3, 5)),
    )
    second_job_cats = _page(library, filters=GalleryFilters(job_id=library.job_ids[1], tag="animal/cat"))

    assert _names(videos.items) == ["day-10", "day-07", "day-04", "day-01"]
    assert _names(failed.items) == ["day-07"]
    assert _names(days.items) == ["day-04", "day-03", "day-02"], "both ends of the day range are included"
    assert _names(second_job_cats.items) == ["day-09", "day-06"]


def test_cards_carry_their_best_tags_and_nsfw_score(library: Library) -> None:
    page = _page(library, filters=GalleryFilters(created_from=date(2026, 3, 5), created_to=date(2026, 3, 6)))

    day5, day4 = page.items
    assert [(t.tag, t.score) for t in day5.tags] == [("scene/beach", 0.95), ("animal/cat", 0.6), ("a_b/odd", 0.5)]
    assert (day4.nsfw_score, day5.nsfw_score) == (0.9, None)


def test_another_tenants_assets_never_show_even_with_the_same_tags(library: Library) -> None:
    other = make_tenant()
    other_job = _add_job(other.id, "theirs")
    _add_asset(other.id, other_job, at=DAY0 + timedelta(days=30), name="theirs", tags={"animal/cat": 1.0})

    mine = _page(library, filters=GalleryFilters(tag="animal/cat"))
    theirs_job_in_mine = _page(library, filters=GalleryFilters(job_id=other_job))

    assert "theirs" not in _names(mine.items) and mine.total == 5
    assert theirs_job_in_mine.items == [] and theirs_job_in_mine.total == 0
    with session_scope() as session:
        facets = tag_facets(session, tenant_id=other.id)
    assert [(f.tag, f.count) for f in facets.tags] == [("animal/cat", 1)]


def test_facets_count_assets_per_tag_and_list_categories(library: Library) -> None:
    with session_scope() as session:
        facets = tag_facets(session, tenant_id=library.tenant.id)

    assert [(f.tag, f.count) for f in facets.tags] == [
        ("animal/cat", 5),
        ("animal/dog", 4),
        ("scene/beach", 4),
        ("a_b/odd", 1),
    ], "most used first, then by name"
    assert facets.categories == ["a_b", "animal", "scene"]


def test_bad_filter_values_are_reported_per_field_and_left_out() -> None:
    filters, errors = parse_filters(
        {"tag": "an*mal", "kind": "pdf", "status": "exploded", "from": "2026-13-01", "to": "x", "job": "nope"}
    )

    assert filters == GalleryFilters()
    assert set(errors) == {"tag", "kind", "status", "from", "to", "job"}
    assert "image, video, audio" in errors["kind"] and "YYYY-MM-DD" in errors["from"]
    reversed_days, problems = parse_filters({"from": "2026-03-05", "to": "2026-03-01", "kind": " Video "})
    assert (reversed_days.created_from, reversed_days.created_to, reversed_days.kind) == (
        date(2026, 3, 5),
        None,
        "video",
    )
    assert "before" in problems["to"]


def test_a_cursor_that_is_not_ours_is_refused_with_a_clear_message(library: Library) -> None:
    for token in ("garbage", "1.zz", f"99999999999999999999.{uuid.uuid4().hex}"):
        with pytest.raises(GalleryFilterError) as refused:
            _page(library, cursor=token)
        assert refused.value.field == "cursor"
    assert Cursor.decode(Cursor(DAY0, library.newest_first[0]).encode()) == Cursor(DAY0, library.newest_first[0])


def test_a_page_of_thousands_is_read_along_the_tenant_created_index(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    job = _add_job(tenant.id, "big")
    with session_scope() as session:
        session.execute(
            insert(Asset),
            [
                {
                    "id": uuid.uuid4(),
                    "tenant_id": tenant.id,
                    "job_id": job,
                    "original_name": f"{n}.jpg",
                    "status": AssetStatus.DONE,
                    "size_bytes": 1,
                    "created_at": DAY0 + timedelta(seconds=n),
                    "updated_at": DAY0,
                }
                for n in range(3000)
            ],
        )
    query = page_query(tenant_id=tenant.id, filters=GalleryFilters(), position=None, direction="older", limit=48)
    engine = get_sessionmaker().kw["bind"]
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE assets"))
            plan = conn.exec_driver_sql("EXPLAIN " + sql).all()
        else:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()

    assert "ix_assets_tenant_created" in " ".join(str(row) for row in plan), plan
    page = _page(Library(tenant, [job], []), limit=48)
    assert len(page.items) == 48 and page.items[0].name == "2999.jpg" and page.total == 3000


# --- REST -------------------------------------------------------------------------------------------------------


@pytest.fixture
def client(orch_env: OrchestratorEnv) -> TestClient:
    get_settings.cache_clear()
    return TestClient(create_app())


def test_rest_assets_list_filters_and_pages_with_cursors(client: TestClient, library: Library) -> None:
    headers = library.tenant.headers

    first = client.get("/api/v1/assets", params={"tag": "animal/*", "limit": 4}, headers=headers)
    second = client.get(
        "/api/v1/assets", params={"tag": "animal/*", "limit": 4, "cursor": first.json()["older"]}, headers=headers
    )
    audio = client.get(
        "/api/v1/assets", params={"kind": "audio", "status": "done", "from": "2026-03-03"}, headers=headers
    )

    assert first.status_code == 200, first.text
    body = first.json()
    assert body["count"] == 9 and len(body["data"]) == 4 and body["newer"] is None
    assert [d["name"] for d in body["data"]] == ["day-10", "day-09", "day-07", "day-06"]
    assert body["data"][0]["thumbnail_url"] is None
    assert [d["name"] for d in second.json()["data"]] == ["day-05", "day-04", "day-03", "day-01"]
    assert [d["name"] for d in audio.json()["data"]] == ["day-11", "day-08", "day-05", "day-02"]


def test_rest_assets_list_refuses_bad_filters_with_422_and_shows_no_other_tenant(
    client: TestClient, library: Library
) -> None:
    headers = library.tenant.headers
    bad = [
        client.get("/api/v1/assets", params=params, headers=headers)
        for params in (
            {"kind": "pdf"},
            {"status": "x"},
            {"from": "yesterday"},
            {"job": "1"},
            {"cursor": "nope"},
            {"tag": "a*b"},
            {"from": "2026-03-05", "to": "2026-03-01"},
            {"limit": 0},
        )
    ]
    other = make_tenant()

    theirs = client.get("/api/v1/assets", headers=other.headers)

    assert [(b.status_code, b.json()["detail"]["code"]) for b in bad] == [(422, "invalid_request")] * 8
    assert "cursor" in bad[4].json()["detail"]["message"]
    assert theirs.json() == {"data": [], "count": 0, "older": None, "newer": None}
