"""Faces become people: Face rows from faces results, people grown when a job finishes, and the hand edits (rename,
merge, split, move) through REST and the dashboard, each on the tenant's own people only."""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from orchestrator import cli
from orchestrator.api.main import create_app
from orchestrator.client import ApiClient
from orchestrator.client_config import ClientConfig
from orchestrator.db.models import Face, Person, Result
from orchestrator.db.session import session_scope
from orchestrator.indexing import index_assets, rebuild_tenant
from orchestrator.ingest import prepare_asset
from orchestrator.people import service
from orchestrator.people.faces import embedding_of
from orchestrator.settings import get_settings
from orchestrator.storage import LocalStorage
from orchestrator.tenants import issue_api_key
from tests.fixtures.factories import jpeg_bytes
from tests.fixtures.people import faces_payload, identity_faces, run_faces_job
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.web import SignedInClient, signed_in_client

pytestmark = pytest.mark.integration


@pytest.fixture
def client(orch_env: OrchestratorEnv) -> SignedInClient:
    get_settings.cache_clear()
    return signed_in_client(create_app(), tenant_name=f"acme-{uuid.uuid4().hex[:6]}")


def _csrf(client: SignedInClient) -> dict[str, str]:
    return {"X-CSRF-Token": client.csrf_token}


def _job_with_photos(client: SignedInClient, count: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A sealed job of ``count`` prepared photos uploaded through the REST API with the dashboard's cookie."""
    job = client.post("/api/v1/jobs", json={"name": "family"}, headers=_csrf(client)).json()
    ids = []
    for n in range(count):
        photo = jpeg_bytes(320, 240, (20 * n % 255, 90, 160))
        answer = client.post(
            f"/api/v1/jobs/{job['id']}/files", files={"files": (f"p{n}.jpg", photo)}, headers=_csrf(client)
        )
        ids.append(uuid.UUID(answer.json()["files"][0]["asset_id"]))
    storage = LocalStorage(get_settings().media_dir)
    with session_scope() as session:
        for asset_id in ids:
            assert prepare_asset(session, storage=storage, asset_id=asset_id, max_image_pixels=10**8)
    assert client.post(f"/api/v1/jobs/{job['id']}/seal", headers=_csrf(client)).status_code == 200
    return uuid.UUID(job["id"]), ids


def _people(tenant_id: uuid.UUID) -> dict[uuid.UUID, set[tuple[uuid.UUID, int]]]:
    """Each person's faces as (asset, face index)."""
    with session_scope() as session:
        found: dict[uuid.UUID, set[tuple[uuid.UUID, int]]] = {}
        for face in session.scalars(select(Face).where(Face.tenant_id == tenant_id, Face.person_id.is_not(None))):
            assert face.person_id is not None
            found.setdefault(face.person_id, set()).add((face.asset_id, face.face_index))
        return found


def _three_people(client: SignedInClient) -> tuple[list[uuid.UUID], dict[int, set[tuple[uuid.UUID, int]]]]:
    """Six photos: identities 0, 1, 2 with four faces each spread over them, plus one stranger's face on photo 5.
    Returns the asset ids and, per identity, its faces."""
    job_id, assets = _job_with_photos(client, 6)
    people = identity_faces(3, 4, seed=21)
    stranger = identity_faces(1, 1, seed=22)[0]
    on_photo: dict[int, list[tuple[int, list[float]]]] = {n: [] for n in range(6)}
    for who, faces in enumerate(people):
        for k, vector in enumerate(faces):
            on_photo[(who + k) % 6].append((who, vector))
    on_photo[5].append((-1, stranger[0]))
    truth: dict[int, set[tuple[uuid.UUID, int]]] = {}
    payloads = {}
    for n, faces in on_photo.items():
        payloads[assets[n]] = faces_payload([v for _, v in faces])
        for index, (who, _) in enumerate(faces):
            truth.setdefault(who, set()).add((assets[n], index))
    run_faces_job(job_id, payloads)
    return assets, truth


def test_faces_from_results_become_face_rows_and_people_when_the_job_finishes(client: SignedInClient) -> None:
    assert client.tenant_id is not None

    _, truth = _three_people(client)

    with session_scope() as session:
        faces = list(session.scalars(select(Face).where(Face.tenant_id == client.tenant_id)))
        assert len(faces) == 13 and all(f.embedding is not None and len(f.box) == 4 for f in faces)
        people = list(session.scalars(select(Person).where(Person.tenant_id == client.tenant_id)))
        assert sorted(p.face_count for p in people) == [4, 4, 4]
        for person in people:
            assert person.centroid is not None and len(embedding_of(person.centroid)) == 512
            assert person.cover_face_id in {f.id for f in faces if f.person_id == person.id}
    assert sorted(map(sorted, _people(client.tenant_id).values())) == sorted(sorted(truth[who]) for who in (0, 1, 2)), (
        "each person is one identity; the stranger stays unassigned"
    )


def test_new_faces_join_known_people_at_once_and_hand_made_changes_survive_a_rebuild(client: SignedInClient) -> None:
    assert client.tenant_id is not None
    tenant_id = client.tenant_id
    _, truth = _three_people(client)
    with session_scope() as session:
        by_face = {
            (f.asset_id, f.face_index): f for f in session.scalars(select(Face).where(Face.tenant_id == tenant_id))
        }
        person_of = {who: by_face[next(iter(faces))].person_id for who, faces in truth.items() if who >= 0}
        moved = by_face[sorted(truth[0])[0]]
        removed = by_face[sorted(truth[1])[0]]
        service.move_face(session, tenant_id=tenant_id, face_id=moved.id, person_id=person_of[2])
        service.move_face(session, tenant_id=tenant_id, face_id=removed.id, person_id=None)
        moved_id, removed_id = moved.id, removed.id
    more = identity_faces(3, 6, seed=21)[0][4:]  # two more faces of identity 0, never seen
    job_id, assets = _job_with_photos(client, 1)

    run_faces_job(job_id, {assets[0]: faces_payload(more)})
    with session_scope() as session:
        rebuild_tenant(session, tenant_id=tenant_id)

    with session_scope() as session:
        new = list(session.scalars(select(Face).where(Face.asset_id == assets[0])))
        assert {f.person_id for f in new} == {person_of[0]} and {f.assigned_by for f in new} == {"auto"}
        moved_face, removed_face = session.get(Face, moved_id), session.get(Face, removed_id)
        assert moved_face is not None and moved_face.person_id == person_of[2] and moved_face.assigned_by == "user"
        assert removed_face is not None and removed_face.person_id is None and removed_face.assigned_by == "user"
        counts = {p.id: p.face_count for p in session.scalars(select(Person).where(Person.tenant_id == tenant_id))}
        assert counts == {person_of[0]: 5, person_of[1]: 3, person_of[2]: 5}


def test_analysing_an_asset_again_keeps_unchanged_faces_and_replaces_changed_ones(client: SignedInClient) -> None:
    assert client.tenant_id is not None
    assets, _ = _three_people(client)
    with session_scope() as session:
        before = {
            f.face_index: (f.id, f.person_id) for f in session.scalars(select(Face).where(Face.asset_id == assets[0]))
        }
        result = session.scalar(select(Result).where(Result.asset_id == assets[0], Result.analyzer == "faces"))
        assert result is not None
        payload: dict[str, Any] = dict(result.payload)
        faces = [dict(f) for f in payload["faces"]]
        faces[-1]["embedding"] = identity_faces(1, 1, seed=77)[0][0]
        result.payload = payload | {"faces": faces}
    with session_scope() as session:
        index_assets(session, tenant_id=client.tenant_id, asset_ids=[assets[0]])

    with session_scope() as session:
        after = {
            f.face_index: (f.id, f.person_id) for f in session.scalars(select(Face).where(Face.asset_id == assets[0]))
        }
    last = max(before)
    assert {i: before[i] for i in before if i != last} == {i: after[i] for i in after if i != last}
    assert after[last][0] != before[last][0] and after[last][1] is None


def test_rest_lists_shows_renames_merges_splits_and_moves_people(client: SignedInClient) -> None:
    _three_people(client)
    people = client.get("/api/v1/people").json()
    assert people["count"] == 3 and [p["face_count"] for p in people["data"]] == [4, 4, 4]
    first, second, third = (p["id"] for p in people["data"])

    detail = client.get(f"/api/v1/people/{first}", params={"limit": 2}).json()
    assert detail["asset_count"] == 4 and len(detail["assets"]) == 2
    assert all(f["person_id"] == first for f in detail["faces"]) and detail["faces"]

    named = client.patch(f"/api/v1/people/{first}", json={"name": "  Ada   Lovelace "}, headers=_csrf(client))
    assert named.status_code == 200 and named.json()["name"] == "Ada Lovelace"
    too_long = client.patch(f"/api/v1/people/{first}", json={"name": "x" * 201}, headers=_csrf(client))
    assert too_long.status_code == 422 and too_long.json()["detail"]["code"] == "invalid_people_request"
    unnamed_first = client.get("/api/v1/people", params={"order": "unnamed"}).json()["data"]
    assert unnamed_first[-1]["id"] == first

    merged = client.post(f"/api/v1/people/{second}/merge", json={"into": first}, headers=_csrf(client))
    assert merged.status_code == 200 and merged.json()["face_count"] == 8 and merged.json()["name"] == "Ada Lovelace"
    assert client.get(f"/api/v1/people/{second}").status_code == 404
    itself = client.post(f"/api/v1/people/{first}/merge", json={"into": first}, headers=_csrf(client))
    assert itself.status_code == 422

    faces = client.get(f"/api/v1/people/{first}").json()["faces"]
    split = client.post(
        f"/api/v1/people/{first}/split", json={"face_ids": [faces[0]["id"]], "name": "Someone"}, headers=_csrf(client)
    )
    assert split.status_code == 200 and split.json()["face_count"] == 1 and split.json()["name"] == "Someone"
    foreign = client.post(f"/api/v1/people/{first}/split", json={"face_ids": [faces[0]["id"]]}, headers=_csrf(client))
    assert foreign.status_code == 422, "that face is no longer this person's"

    moved = client.patch(f"/api/v1/faces/{faces[1]['id']}", json={"person_id": third}, headers=_csrf(client))
    assert moved.status_code == 200 and moved.json()["person_id"] == third and moved.json()["assigned_by"] == "user"
    counts = {p["id"]: p["face_count"] for p in client.get("/api/v1/people").json()["data"]}
    assert counts == {first: 6, third: 5, split.json()["id"]: 1}


def test_a_face_crop_is_a_small_cached_jpeg_of_the_box(client: SignedInClient) -> None:
    _three_people(client)
    person = client.get("/api/v1/people").json()["data"][0]

    crop = client.get(person["cover_url"])

    assert crop.status_code == 200 and crop.headers["content-type"] == "image/jpeg"
    assert "max-age" in crop.headers["cache-control"]
    picture = Image.open(io.BytesIO(crop.content))
    # The box is 0.15 x 0.3 of a 320 x 240 photo (48 x 72 px), grown by a quarter on each side.
    assert picture.size == (72, 108)
    assert client.get("/api/v1/faces/999999999/crop").status_code == 404


def test_dashboard_people_grid_and_person_page_rename_merge_and_split(client: SignedInClient) -> None:
    _three_people(client)
    first, second, third = (p["id"] for p in client.get("/api/v1/people").json()["data"])

    grid = client.get("/people")
    assert grid.status_code == 200 and grid.text.count('class="person-card"') == 3 and f"/people/{first}" in grid.text
    page = client.get(f"/people/{first}")
    assert page.status_code == 200 and "Unnamed person" in page.text and 'name="face_id"' in page.text

    csrf = {"csrf_token": client.csrf_token}
    renamed = client.post(f"/people/{first}/name", data=csrf | {"name": "Grace"}, follow_redirects=False)
    assert renamed.status_code == 303
    assert "Grace" in client.get(f"/people/{first}").text
    refused = client.post(f"/people/{first}/name", data=csrf | {"name": "y" * 300})
    assert refused.status_code == 422 and "at most 200" in refused.text
    forged = client.post(f"/people/{first}/name", data={"name": "Mallory", "csrf_token": "wrong"})
    assert forged.status_code == 403

    merged = client.post(f"/people/{second}/merge", data=csrf | {"into": first}, follow_redirects=False)
    assert merged.status_code == 303 and merged.headers["location"] == f"/people/{first}"
    face_ids = [f["id"] for f in client.get(f"/api/v1/people/{first}").json()["faces"]][:2]
    split = client.post(
        f"/people/{first}/split",
        data={"csrf_token": client.csrf_token, "action": "split", "face_id": [str(i) for i in face_ids]},
        follow_redirects=False,
    )
    assert split.status_code == 303
    new_person = split.headers["location"].rsplit("/", 1)[1]
    assert client.get(f"/api/v1/people/{new_person}").json()["face_count"] == 2
    removed = client.post(
        f"/people/{third}/split",
        data={"csrf_token": client.csrf_token, "action": "remove", "face_id": [str(face_ids[0])]},
    )
    assert removed.status_code == 422, "that face is not the third person's"
    with session_scope() as session:
        names = {p.name for p in session.scalars(select(Person).where(Person.tenant_id == client.tenant_id))}
    assert names == {"Grace", None}


def test_the_asset_page_links_its_faces_to_their_people(client: SignedInClient) -> None:
    assets, _ = _three_people(client)

    page = client.get(f"/assets/{assets[0]}")

    assert page.status_code == 200 and 'id="asset-people"' in page.text
    assert "/people/" in page.text and "/api/v1/faces/" in page.text


def test_another_tenants_people_are_never_listed_or_shown(client: SignedInClient, orch_env: OrchestratorEnv) -> None:
    _three_people(client)
    person = client.get("/api/v1/people").json()["data"][0]["id"]
    other = signed_in_client(create_app(), tenant_name=f"other-{uuid.uuid4().hex[:6]}")

    assert other.get("/api/v1/people").json() == {"data": [], "count": 0}
    assert other.get(f"/people/{person}").status_code == 404
    assert "person-card" not in other.get("/people").text
    assert other.post(f"/people/{person}/name", data={"csrf_token": other.csrf_token, "name": "x"}).status_code == 404


def test_the_people_commands_list_name_and_merge(client: SignedInClient, monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.tenant_id is not None
    _three_people(client)
    with session_scope() as session:
        _, key = issue_api_key(session, tenant_id=client.tenant_id, name="cli")

    def to_the_app(request: httpx.Request) -> httpx.Response:
        """Hands the command's request to the real app in this process."""
        answer = client.request(
            request.method, str(request.url), headers=dict(request.headers), content=request.content
        )
        return httpx.Response(answer.status_code, headers=dict(answer.headers), content=answer.content)

    def make_client(config: ClientConfig) -> ApiClient:
        return ApiClient("http://testserver", config.api_key, transport=httpx.MockTransport(to_the_app))

    monkeypatch.setattr(cli, "make_client", make_client)
    env = {"ORCH_API_URL": "http://testserver", "ORCH_API_KEY": key, "COLUMNS": "250"}
    first, second, _ = (p["id"] for p in client.get("/api/v1/people").json()["data"])

    listed = CliRunner().invoke(cli.app, ["people", "list"], env=env)
    named = CliRunner().invoke(cli.app, ["people", "name", first, "Ada Lovelace"], env=env)
    merged = CliRunner().invoke(cli.app, ["people", "merge", second, first], env=env)
    itself = CliRunner().invoke(cli.app, ["people", "merge", first, first], env=env)

    assert listed.exit_code == 0 and "3 people" in listed.output and first in listed.output, listed.output
    assert named.exit_code == 0 and "Ada Lovelace" in named.output, named.output
    assert merged.exit_code == 0 and "8 faces" in merged.output, merged.output
    assert itself.exit_code != 0 and "itself" in itself.output, itself.output
