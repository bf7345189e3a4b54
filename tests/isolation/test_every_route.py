"""Tenant isolation over EVERY route of the real app: the REST API, the dashboard pages, media, metrics, docs.

Routes are enumerated from ``app.routes``; each one must be classified here or in the REST tables of
``tests/integration/test_api_tenancy.py`` (which drive every API route with tenant B's key), so a new route fails
the enumeration test until someone says how it is scoped. Tenant A owns a job, assets, results with tags, people
and faces, a write-back and a near-duplicate pair. Tenant B, signed in to the dashboard, calls every page and every
REST route (through its session cookie) with A's ids in the path, the query and the form: an object route answers
exactly as for an id that does not exist (404, or the page's own "gone" notice), an operator route 403, and no answer
of any route shows A's ids, names or tags. A's objects are unchanged afterwards.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from orchestrator.api.dashboard.web import CSRF_HEADER
from orchestrator.api.main import create_app
from orchestrator.db.models import ApiKey, Asset, Person, Result, ResultTag
from orchestrator.db.session import session_scope
from orchestrator.search.documents import refresh_documents
from orchestrator.settings import Settings
from tests.fixtures.web import SignedInClient, signed_in_client
from tests.integration import test_api_tenancy
from tests.integration.test_api_tenancy import ADMIN_ROUTES, PUBLIC_ROUTES, TENANT_ROUTES, World, _filled

pytestmark = pytest.mark.integration
# The REST tests run on SQLite and PostgreSQL already; these run on the production database only.
on_postgresql = pytest.mark.parametrize("orch_env", ["postgresql"], indirect=True)
# The REST tenancy tests' world (A's job, asset, people, write-back, duplicates; B's key), registered here as `world`.
world = test_api_tenancy.world

A_TAG = "zebraquagga"


@dataclass(frozen=True)
class Page:
    """How a non-REST route is scoped and how B calls it.

    ``kind``: "object" names one of A's objects (B gets ``expect``, the same as for a missing id); "mine" shows or
    changes only the caller's own tenant; "operator" is for operators only (403 for a member); "public" needs no
    one (sign-in, health, docs); "signed" needs a signed media token (403 for a forged one); "metrics" is for the
    scraper only.
    """

    kind: str
    form: dict[str, Any] | None = None
    query: str = ""
    expect: int = 404


PAGES: dict[tuple[str, str], Page] = {
    ("GET", "/"): Page("mine"),
    ("GET", "/login"): Page("public"),
    ("POST", "/login"): Page("public", form={"login_token": "x"}),
    ("POST", "/logout"): Page("mine"),
    ("GET", "/account"): Page("mine"),
    ("GET", "/upload"): Page("mine"),
    ("GET", "/jobs"): Page("mine"),
    ("GET", "/jobs/live"): Page("mine"),
    ("GET", "/jobs/{job_id}"): Page("object"),
    ("GET", "/jobs/{job_id}/live"): Page("object"),
    ("POST", "/jobs/{job_id}/cancel"): Page("object", form={}),
    ("POST", "/jobs/{job_id}/retry"): Page("object", form={}),
    ("GET", "/jobs/{job_id}/results.json"): Page("object"),
    ("GET", "/jobs/{job_id}/results.csv"): Page("object"),
    ("POST", "/jobs/{job_id}/writeback"): Page("object", form={"mode": "append"}),
    ("POST", "/writeback/{write_id}/undo"): Page("object", form={}),
    ("GET", "/gallery"): Page("mine", query=f"?q={A_TAG}"),
    ("GET", "/assets/{asset_id}"): Page("object"),
    ("GET", "/similar"): Page("object", query="?asset={asset_id}"),
    ("GET", "/people"): Page("mine"),
    ("GET", "/people/{person_id}"): Page("object"),
    ("POST", "/people/{person_id}/name"): Page("object", form={"name": "Mallory"}),
    ("POST", "/people/{person_id}/merge"): Page("object", form={"into": "{other_person_id}"}),
    ("POST", "/people/{person_id}/split"): Page("object", form={"face_id": "{face_id}"}),
    ("GET", "/duplicates"): Page("mine"),
    # The page's answer to a group that is not (or no longer) there is a redirect with a "gone" notice.
    ("POST", "/duplicates/{group_key}/dismiss"): Page("object", form={}, expect=303),
    ("GET", "/settings"): Page("mine"),
    ("POST", "/settings"): Page("mine", form={}),
    ("GET", "/spend"): Page("mine"),
    ("GET", "/spend/live"): Page("mine"),
    ("GET", "/operator"): Page("operator"),
    ("POST", "/operator/tenants"): Page("operator", form={"tenant_name": "by-b"}),
    ("POST", "/operator/tenants/{tenant_id}/keys"): Page("operator", form={"key_name": "b"}),
    ("POST", "/operator/keys/{key_id}/revoke"): Page("operator", form={}),
    ("POST", "/operator/users"): Page("operator", form={"username": "b2", "password": "x" * 20}),
    ("GET", "/media/{token}"): Page("signed"),
    ("GET", "/metrics"): Page("metrics"),
    ("GET", "/healthz"): Page("public"),
    ("GET", "/docs"): Page("public"),
    ("GET", "/docs/oauth2-redirect"): Page("public"),
    ("GET", "/redoc"): Page("public"),
    ("MOUNT", "/static"): Page("public"),
}


def every_route(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route of the app, mounts as ("MOUNT", path); HEAD is GET's twin and left out."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = list(iterate(app.routes)) if iterate is not None else list(app.routes)
    found: set[tuple[str, str]] = set()
    for route in routes:
        path = getattr(route, "path", None)
        if path is None:
            found.add(("UNINSPECTABLE", repr(route)))
            continue
        methods = getattr(route, "methods", None) or {"MOUNT"}
        found |= {(method, path) for method in methods if method != "HEAD"}
    return found


def test_every_route_of_the_app_is_classified(tmp_path: Path) -> None:
    """A new route fails here until it is added to PAGES or to the REST tables of test_api_tenancy."""
    routes = every_route(create_app(Settings(data_dir=tmp_path, environment="test")))
    known = set(PAGES) | set(TENANT_ROUTES) | set(ADMIN_ROUTES) | PUBLIC_ROUTES

    print(f"\nroutes: {len(routes)} ({len(PAGES)} outside the REST tables, {len(routes) - len(PAGES)} REST)")
    assert routes - known == set(), f"routes no isolation test knows how to call: {sorted(routes - known)}"
    assert known - routes == set(), f"the tables name routes that no longer exist: {sorted(known - routes)}"


@dataclass
class Tenants:
    """A's objects (``ids``), what of A must never show to B (``markers``), and B signed in to the dashboard."""

    world: World
    ids: dict[str, str]
    markers: list[str]
    b: SignedInClient


@pytest.fixture
def tenants(world: World) -> Iterator[Tenants]:
    """The REST tenancy world plus results with a tag of A's, one of A's key ids, and B's dashboard session."""
    with session_scope() as session:
        asset_ids = list(session.scalars(select(Asset.id).where(Asset.tenant_id == world.a.id)))
        for asset_id in asset_ids:
            session.add(
                Result(
                    tenant_id=world.a.id,
                    asset_id=asset_id,
                    analyzer="clip",
                    model_id="tiny",
                    payload={"tags": {A_TAG: 0.9}},
                )
            )
            session.add(ResultTag(tenant_id=world.a.id, asset_id=asset_id, analyzer="clip", tag=A_TAG, score=0.9))
        session.flush()
        refresh_documents(session, tenant_id=world.a.id, asset_ids=asset_ids)  # what storing results does
        person = session.get(Person, uuid.UUID(world.people["person_id"]))
        assert person is not None
        person.name = "Ada of tenant A"
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.tenant_id == world.a.id))
    ids = {"job_id": world.job_id, "asset_id": world.asset_id, **world.people, "tenant_id": str(world.a.id)}
    ids |= {"key_id": str(key_id), "token": f"{world.asset_id}.forged"}
    markers = [world.job_id, *map(str, asset_ids), world.people["person_id"], world.people["other_person_id"]]
    markers += [world.people["write_id"], world.people["group_key"], world.a.name, "a's job", "a.jpg", A_TAG]
    markers += ["Ada of tenant A", world.a.key]
    b = signed_in_client(world.client.app, tenant_name=world.b.name)  # type: ignore[arg-type]
    yield Tenants(world=world, ids=ids, markers=markers, b=b)
    b.close()


def _missing_ids() -> dict[str, str]:
    ids = {name: str(uuid.uuid4()) for name in ("job_id", "asset_id", "person_id", "other_person_id", "write_id")}
    return ids | {"face_id": "987654321", "group_key": "0" * 64, "tenant_id": str(uuid.uuid4())}


def _fill(text: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{([a-z_]+)\}", lambda m: ids[m.group(1)], text)


def _call_page(client: SignedInClient, method: str, path: str, page: Page, ids: dict[str, str]) -> Any:
    url = _fill(path, ids) + _fill(page.query, ids)
    headers = {CSRF_HEADER: client.csrf_token}
    if method == "GET":
        return client.get(url, follow_redirects=False)
    form = {k: _fill(v, ids) for k, v in (page.form or {}).items()}
    return client.post(url, data=form, headers=headers, follow_redirects=False)


def _state_of_a(t: Tenants) -> tuple[object, ...]:
    with session_scope() as session:
        mine = select(Person.id, Person.name, Person.face_count).where(Person.tenant_id == t.world.a.id)
        people = session.execute(mine.order_by(Person.id)).all()
        results = session.scalar(select(func.count()).select_from(Result).where(Result.tenant_id == t.world.a.id))
        keys = session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None)))
    return tuple(people), results, keys


def _leaks(t: Tenants, text: str, asked: str = "") -> list[str]:
    """A's markers in an answer, leaving out what B itself asked for (a search box shows the query back)."""
    return [marker for marker in t.markers if marker in text and marker not in asked]


@on_postgresql
def test_b_signed_in_to_the_dashboard_never_reaches_a_on_any_page(tenants: Tenants) -> None:
    t = tenants
    before, files_before = _state_of_a(t), t.world.media_files()
    problems: list[str] = []

    # POST /logout ends B's session: it goes last.
    for (method, path), page in sorted(PAGES.items(), key=lambda item: item[0][1] == "/logout"):
        if method == "MOUNT":
            answer = t.b.get(f"{path}/app.css", follow_redirects=False)
        else:
            answer = _call_page(t.b, method, path, page, t.ids)
        where = f"{method} {path}"
        shown = answer.text + str(answer.headers)
        problems += [f"{where}: shows A's {leak!r}" for leak in _leaks(t, shown, asked=page.query)]
        if answer.status_code >= 500:
            problems.append(f"{where}: {answer.status_code}")
        if page.kind == "object":
            missing = _call_page(t.b, method, path, page, _missing_ids())
            if answer.status_code != page.expect or missing.status_code != page.expect:
                problems.append(f"{where}: A's id {answer.status_code}, a missing id {missing.status_code}")
            elif page.expect == 303 and answer.headers["location"] != missing.headers["location"]:
                problems.append(f"{where}: A's id -> {answer.headers['location']}, missing -> {missing.headers}")
        elif page.kind in ("operator", "signed") and answer.status_code != 403:
            problems.append(f"{where}: a member got {answer.status_code}, not 403")
        elif page.kind == "metrics" and answer.status_code not in (401, 403):
            problems.append(f"{where}: a member got {answer.status_code}")
        elif page.kind == "mine" and method == "GET" and answer.status_code not in (200, 303):
            problems.append(f"{where}: B's own page answered {answer.status_code}")

    assert problems == []
    assert _state_of_a(t) == before, "B's calls changed A's people, results or keys"
    assert t.world.media_files() == files_before


@on_postgresql
def test_b_gets_404_for_a_on_every_rest_route_with_its_cookie_and_finds_nothing_of_a(tenants: Tenants) -> None:
    t = tenants
    before = _state_of_a(t)
    headers = {CSRF_HEADER: t.b.csrf_token}
    problems: list[str] = []

    for (method, path), call in TENANT_ROUTES.items():
        url = _fill(path, t.ids)
        if call.upload:
            files = {"files": ("b.jpg", b"\xff\xd8\xff", "image/jpeg")}
            answer = t.b.request(method, url, files=files, headers=headers)
        else:
            answer = t.b.request(method, url, json=_filled(call.json, t.ids), headers=headers)
        problems += [f"{method} {path}: shows A's {leak!r}" for leak in _leaks(t, answer.text)]
        if call.names_an_object and (answer.status_code, answer.json()["detail"]["code"]) != (404, "not_found"):
            problems.append(f"{method} {path}: {answer.status_code} {answer.text[:200]}")

    assert problems == []
    assert _state_of_a(t) == before
    a_search = t.world.client.get("/api/v1/search", params={"q": A_TAG}, headers=t.world.a.headers).json()
    assert a_search["count"] >= 1, "A finds its own tag (the query is one that matches)"
    for url in ("/api/v1/search?q=" + A_TAG, "/api/v1/search", "/api/v1/assets", "/api/v1/people"):
        answer = t.world.client.get(url, headers=t.world.b.headers)
        assert answer.status_code == 200 and answer.json()["count"] == 0, (url, answer.text[:300])
        assert _leaks(t, answer.text, asked=url) == []
    b_jobs = t.world.client.get("/api/v1/jobs", headers=t.world.b.headers).json()["data"]
    assert [job["name"] for job in b_jobs] == ["b's job"], "only the job B made above (POST /api/v1/jobs)"
