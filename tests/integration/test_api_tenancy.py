"""Tenant isolation of the REST API (STYLE.md point 3): every tenant route, driven with tenant B's key against tenant
A's ids, answers 404 not_found exactly as for an id that does not exist; never 403, never A's data.

The routes are enumerated from the app. A route this file does not know how to call fails the enumeration test, so
a new route cannot be added without being checked here.
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
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from orchestrator.api.main import create_app
from orchestrator.db.models import Asset, Job, Tenant
from orchestrator.db.session import session_scope
from orchestrator.ingest import prepare_asset
from orchestrator.settings import Settings, get_settings
from orchestrator.storage import LocalStorage
from tests.fixtures.duplicates import seed_near_pair
from tests.fixtures.factories import TenantWithKey, jpeg_bytes, make_tenant
from tests.fixtures.people import seed_people
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.writeback import seed_write

pytestmark = pytest.mark.integration

API_PREFIX = "/api/v1"
ADMIN_PREFIX = "/api/v1/admin"
ADMIN_TOKEN = "test-admin-token"  # the token of tests.fixtures.services.OrchestratorEnv


@dataclass(frozen=True)
class Call:
    """How to call one route: its body, and whether it names one of tenant A's objects in its path."""

    json: dict[str, Any] | None = None
    upload: bool = False
    ok: tuple[int, ...] = (200,)
    names_an_object: bool = True


# Tenant routes. Seal comes last: A's own calls run in this order, and a sealed job takes no more files.
TENANT_ROUTES: dict[tuple[str, str], Call] = {
    ("POST", "/api/v1/jobs"): Call(json={"name": "b's job"}, ok=(201,), names_an_object=False),
    ("GET", "/api/v1/jobs"): Call(names_an_object=False),
    ("GET", "/api/v1/jobs/{job_id}"): Call(),
    ("GET", "/api/v1/jobs/{job_id}/assets"): Call(),
    ("POST", "/api/v1/jobs/{job_id}/files"): Call(upload=True, ok=(201,)),
    ("GET", "/api/v1/assets/{asset_id}"): Call(),
    ("GET", "/api/v1/assets/{asset_id}/download"): Call(),
    ("GET", "/api/v1/assets/{asset_id}/thumbnail"): Call(),
    ("GET", "/api/v1/assets"): Call(names_an_object=False),
    ("GET", "/api/v1/search"): Call(names_an_object=False),
    ("GET", "/api/v1/assets/{asset_id}/original"): Call(),
    # A's asset is not analyzed, so it has no embedding to compare with (409); /similar requires ?text= (422).
    ("GET", "/api/v1/assets/{asset_id}/similar"): Call(ok=(409,)),
    ("GET", "/api/v1/similar"): Call(ok=(422,), names_an_object=False),
    ("GET", "/api/v1/jobs/{job_id}/report"): Call(),
    ("GET", "/api/v1/jobs/{job_id}/results"): Call(),
    ("POST", "/api/v1/jobs/{job_id}/retry"): Call(),
    ("GET", "/api/v1/settings"): Call(names_an_object=False),
    ("PUT", "/api/v1/settings"): Call(json={"nsfw_threshold": 0.4}, names_an_object=False),
    ("GET", "/api/v1/spend"): Call(names_an_object=False),
    # People: A has person_id (faces face_id and one more) and other_person_id; "{name}" in a body is that id.
    ("GET", "/api/v1/people"): Call(names_an_object=False),
    ("GET", "/api/v1/people/{person_id}"): Call(),
    ("PATCH", "/api/v1/people/{person_id}"): Call(json={"name": "Ada"}),
    ("GET", "/api/v1/faces/{face_id}/crop"): Call(),
    ("POST", "/api/v1/people/{person_id}/split"): Call(json={"face_ids": ["{face_id}"]}),
    ("PATCH", "/api/v1/faces/{face_id}"): Call(json={"person_id": "{other_person_id}"}),
    ("POST", "/api/v1/people/{person_id}/merge"): Call(json={"into": "{other_person_id}"}),
    # Write-back: A's asset is not analyzed, so its write-back skips it; write_id is a finished write-back of A's.
    ("POST", "/api/v1/writeback"): Call(json={"asset_ids": ["{asset_id}"]}, ok=(202,), names_an_object=True),
    ("GET", "/api/v1/writeback"): Call(names_an_object=False),
    ("GET", "/api/v1/writeback/{write_id}"): Call(),
    ("POST", "/api/v1/writeback/{write_id}/undo"): Call(),
    ("GET", "/api/v1/jobs/{job_id}/originals.zip"): Call(),
    # Duplicates: group_key is a near-duplicate pair of A's (two more files in A's job).
    ("GET", "/api/v1/duplicates"): Call(names_an_object=False),
    ("POST", "/api/v1/duplicates/{group_key}/dismiss"): Call(),
    ("POST", "/api/v1/jobs/{job_id}/cancel"): Call(),
    ("POST", "/api/v1/jobs/{job_id}/seal"): Call(),
}

ADMIN_ROUTES: dict[tuple[str, str], Call] = {
    ("POST", "/api/v1/admin/tenants"): Call(json={"name": "created-by-admin"}, ok=(201,), names_an_object=False),
    ("GET", "/api/v1/admin/tenants"): Call(names_an_object=False),
    ("POST", "/api/v1/admin/tenants/{tenant_id}/keys"): Call(json={"name": "k"}, ok=(201,)),
    ("DELETE", "/api/v1/admin/keys/{key_id}"): Call(ok=(204,)),
    ("GET", "/api/v1/admin/spend"): Call(names_an_object=False),
    ("GET", "/api/v1/admin/instances"): Call(names_an_object=False),
}

# starlette's TestClient answers with an httpx2 (or, on older versions, httpx) response.
ClientResponse = Any

# Routes under /api/v1 that need no credentials and show no tenant's data.
PUBLIC_ROUTES = {("GET", "/api/v1/openapi.json")}


def api_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route under /api/v1; a route without methods (websocket, mount) counts too.

    FastAPI 0.120+ keeps included routers as lazy entries of ``app.routes``; ``iter_route_contexts`` (what its
    OpenAPI generator uses) flattens them, hidden routes (``include_in_schema=False``) included.
    """
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = list(iterate(app.routes)) if iterate is not None else list(app.routes)
    found = set()
    for route in routes:
        path = getattr(route, "path", None)
        if path is None:
            found.add(("UNINSPECTABLE", repr(route)))
            continue
        if not path.startswith(API_PREFIX):
            continue
        methods = getattr(route, "methods", None) or {type(getattr(route, "original_route", route)).__name__.upper()}
        found |= {(method, path) for method in methods if method != "HEAD"}
    return found


def test_every_api_route_is_known_to_these_tests(tmp_path: Path) -> None:
    """Add a new route to TENANT_ROUTES or ADMIN_ROUTES above; then the tests below check its scoping."""
    app = create_app(Settings(data_dir=tmp_path, environment="test"))

    routes = api_routes(app)

    unknown = routes - set(TENANT_ROUTES) - set(ADMIN_ROUTES) - PUBLIC_ROUTES
    assert unknown == set(), f"routes the tenancy tests do not know how to call: {sorted(unknown)}"
    assert routes >= set(TENANT_ROUTES) | set(ADMIN_ROUTES), "the tables name routes that no longer exist"
    for _, path in TENANT_ROUTES:
        assert not path.startswith(ADMIN_PREFIX)


def _filled(value: Any, ids: dict[str, str]) -> Any:
    """A JSON body with every ``"{name}"`` string replaced by the id of that name."""
    if isinstance(value, dict):
        return {k: _filled(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, ids) for v in value]
    if isinstance(value, str) and re.fullmatch(r"\{[a-z_]+\}", value):
        return ids[value[1:-1]]
    return value


@dataclass
class World:
    """Tenants A and B on one API; A owns one job with one prepared asset."""

    client: TestClient
    env: OrchestratorEnv
    a: TenantWithKey
    b: TenantWithKey
    job_id: str
    asset_id: str
    people: dict[str, str]

    def call(self, method: str, path: str, call: Call, headers: dict[str, str], ids: dict[str, str]) -> ClientResponse:
        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in ids:
                raise AssertionError(f"{method} {path}: no id to put in {{{name}}}; teach the tenancy tests")
            return ids[name]

        url = re.sub(r"\{([^}]+)\}", fill, path)
        if call.upload:
            files = {"files": ("another.jpg", jpeg_bytes(40, 30, (1, 2, 3)), "image/jpeg")}
            return self.client.request(method, url, files=files, headers=headers)
        return self.client.request(method, url, json=_filled(call.json, ids), headers=headers)

    def media_files(self) -> set[Path]:
        return {p for p in (self.env.data_dir / "media").rglob("*") if p.is_file()}


@pytest.fixture
def world(orch_env: OrchestratorEnv) -> Iterator[World]:
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        a, b = make_tenant("tenant-a"), make_tenant("tenant-b")
        job = client.post("/api/v1/jobs", json={"name": "a's job"}, headers=a.headers).json()
        upload = client.post(
            f"/api/v1/jobs/{job['id']}/files", files={"files": ("a.jpg", jpeg_bytes(), "image/jpeg")}, headers=a.headers
        )
        asset_id = upload.json()["files"][0]["asset_id"]
        with session_scope() as session:
            assert prepare_asset(
                session,
                storage=LocalStorage(orch_env.data_dir / "media"),
                asset_id=uuid.UUID(asset_id),
                max_image_pixels=10**8,
            )
        people = seed_people(a.id, uuid.UUID(asset_id))
        people["write_id"] = seed_write(a.id)
        people["group_key"] = seed_near_pair(client, a.headers, job["id"], orch_env.data_dir / "media")
        yield World(client=client, env=orch_env, a=a, b=b, job_id=job["id"], asset_id=asset_id, people=people)


def _a_ids(world: World) -> dict[str, str]:
    return {"job_id": world.job_id, "asset_id": world.asset_id, **world.people}


def _a_state(world: World) -> tuple[object, ...]:
    with session_scope() as session:
        job = session.get(Job, uuid.UUID(world.job_id))
        assert job is not None
        assets = session.scalar(select(func.count()).select_from(Asset).where(Asset.job_id == job.id))
        return job.status, job.sealed_at, assets


def test_another_tenants_ids_answer_404_not_found_on_every_tenant_route(world: World) -> None:
    a_before, files_before = _a_state(world), world.media_files()
    missing = {"job_id": str(uuid.uuid4()), "asset_id": str(uuid.uuid4())}
    missing |= {"person_id": str(uuid.uuid4()), "other_person_id": str(uuid.uuid4()), "face_id": "987654321"}
    missing["write_id"] = str(uuid.uuid4())
    missing["group_key"] = "0" * 64
    problems = []

    for (method, path), call in TENANT_ROUTES.items():
        answer = world.call(method, path, call, world.b.headers, _a_ids(world))
        leaked = [i for i in (world.job_id, world.asset_id, "a's job", "a.jpg") if i in answer.text]
        if leaked:
            problems.append(f"{method} {path}: B's answer shows A's data {leaked}")
        if not call.names_an_object:
            continue
        if answer.status_code != 404 or answer.json().get("detail", {}).get("code") != "not_found":
            problems.append(f"{method} {path}: B got {answer.status_code} {answer.text[:200]}")
            continue
        nonexistent = world.call(method, path, call, world.b.headers, missing)
        if nonexistent.json() != answer.json():
            problems.append(f"{method} {path}: A's id answers {answer.json()}, a missing id {nonexistent.json()}")

    assert problems == []
    assert _a_state(world) == a_before, "B's calls changed A's job"
    assert world.media_files() == files_before, "B's calls stored or removed files"


def test_list_routes_show_a_tenant_only_its_own_objects(world: World) -> None:
    b_job = world.client.post("/api/v1/jobs", json={"name": "b's job"}, headers=world.b.headers).json()

    a_jobs = world.client.get("/api/v1/jobs", headers=world.a.headers).json()
    b_jobs = world.client.get("/api/v1/jobs", headers=world.b.headers).json()

    assert [j["id"] for j in a_jobs["data"]] == [world.job_id] and a_jobs["count"] == 1
    assert [j["id"] for j in b_jobs["data"]] == [b_job["id"]] and b_jobs["count"] == 1
    with session_scope() as session:
        job = session.get(Job, uuid.UUID(b_job["id"]))
        assert job is not None and job.tenant_id == world.b.id


def test_the_owner_key_works_on_every_tenant_route(world: World) -> None:
    problems = []

    for (method, path), call in TENANT_ROUTES.items():
        answer = world.call(method, path, call, world.a.headers, _a_ids(world))
        if answer.status_code not in call.ok:
            problems.append(f"{method} {path}: A got {answer.status_code} {answer.text[:200]}")

    assert problems == []
    assert _a_state(world)[2] == 4, "A's upload went to A's job (beside a.jpg and the near-duplicate pair)"


def _all_tenant_routes_answer(world: World, headers: dict[str, str], status: int, code: str) -> list[str]:
    problems = []
    for (method, path), call in TENANT_ROUTES.items():
        answer = world.call(method, path, call, headers, _a_ids(world))
        if answer.status_code != status or answer.json().get("detail", {}).get("code") != code:
            problems.append(f"{method} {path}: {answer.status_code} {answer.text[:200]}")
        elif status == 401 and answer.headers.get("www-authenticate") != "Bearer":
            problems.append(f"{method} {path}: 401 without 'WWW-Authenticate: Bearer'")
    return problems


WRONG_CREDENTIALS = {
    "missing": None,
    "empty": "",
    "bearer without a key": "Bearer",
    "bearer with blanks": "Bearer   ",
    "an unknown key": "Bearer mak_00000000_not-a-real-key",
    "basic auth": "Basic dXNlcjpwYXNz",
    "the admin token": f"Bearer {ADMIN_TOKEN}",
}


def test_missing_or_wrong_credentials_answer_401_on_every_tenant_route(world: World) -> None:
    a_before = _a_state(world)
    problems = []

    for case, authorization in WRONG_CREDENTIALS.items():
        headers = {} if authorization is None else {"Authorization": authorization}
        problems += [f"{case}: {p}" for p in _all_tenant_routes_answer(world, headers, 401, "unauthorized")]

    assert problems == []
    assert _a_state(world) == a_before


def test_a_revoked_key_answers_401_at_once(world: World) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    issued = world.client.post(f"/api/v1/admin/tenants/{world.a.id}/keys", json={"name": "laptop"}, headers=admin)
    assert issued.status_code == 201
    key = {"Authorization": f"Bearer {issued.json()['key']}"}
    assert world.client.get(f"/api/v1/jobs/{world.job_id}", headers=key).status_code == 200

    revoked = world.client.delete(f"/api/v1/admin/keys/{issued.json()['id']}", headers=admin)

    assert revoked.status_code == 204
    assert _all_tenant_routes_answer(world, key, 401, "unauthorized") == []
    assert world.client.get(f"/api/v1/jobs/{world.job_id}", headers=world.a.headers).status_code == 200


def test_a_disabled_tenants_keys_answer_401(world: World) -> None:
    with session_scope() as session:
        session.execute(update(Tenant).where(Tenant.id == world.a.id).values(disabled=True))

    assert _all_tenant_routes_answer(world, world.a.headers, 401, "unauthorized") == []


def test_admin_routes_need_the_admin_token(world: World) -> None:
    issued = world.client.post(
        f"/api/v1/admin/tenants/{world.b.id}/keys", json={}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()
    ids = {"tenant_id": str(world.a.id), "key_id": issued["id"]}
    with session_scope() as session:
        tenants_before = session.scalar(select(func.count()).select_from(Tenant))
    problems = []

    for (method, path), call in ADMIN_ROUTES.items():
        for who, headers, status, code in [
            ("a tenant key", world.a.headers, 403, "forbidden"),
            ("a wrong token", {"Authorization": "Bearer not-the-admin-token"}, 403, "forbidden"),
            ("no credentials", {}, 401, "unauthorized"),
        ]:
            answer = world.call(method, path, call, headers, ids)
            if answer.status_code != status or answer.json()["detail"]["code"] != code:
                problems.append(f"{method} {path} with {who}: {answer.status_code} {answer.text[:200]}")
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Tenant)) == tenants_before
    still_valid = {"Authorization": f"Bearer {issued['key']}"}
    assert world.client.get("/api/v1/jobs", headers=still_valid).status_code == 200, "a refused revoke revoked"

    for (method, path), call in ADMIN_ROUTES.items():
        answer = world.call(method, path, call, {"Authorization": f"Bearer {ADMIN_TOKEN}"}, ids)
        if answer.status_code not in call.ok:
            problems.append(f"{method} {path} with the admin token: {answer.status_code} {answer.text[:200]}")

    assert problems == []
    assert world.client.get("/api/v1/jobs", headers=still_valid).status_code == 401
