"""Write-back of tags, named people and face regions into the XMP of stored originals, with real exiftool and real
files, on SQLite and PostgreSQL: what the files read back, append and replace, undo to the exact original bytes,
files that fail or are skipped alone, hostile names, downloads and tenant isolation."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from orchestrator.api.main import create_app
from orchestrator.db.models import Asset, Face, Job, MetadataWriteItem, Person, ResultTag
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, JobStatus
from orchestrator.settings import get_settings
from orchestrator.storage import LocalStorage, blob_key
from orchestrator.tasks.writeback import run_writeback
from tests.fixtures.factories import TenantWithKey, make_tenant, png_bytes
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.web import signed_in_client

pytestmark = pytest.mark.integration

EXIFTOOL = "/usr/bin/exiftool"
# zidane.jpg is 1280 x 720; two face boxes in its pixels (x1, y1, x2, y2).
ZIDANE_FACES = [(700.0, 100.0, 800.0, 220.0), (200.0, 300.0, 260.0, 380.0)]


def sha256(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def read_xmp(data: bytes, suffix: str, tmp_path: Path) -> dict[str, Any]:
    """What exiftool reads from a file's XMP (structures kept)."""
    path = tmp_path / f"read-{uuid.uuid4().hex}{suffix}"
    path.write_bytes(data)
    out = subprocess.run([EXIFTOOL, "-j", "-struct", "-XMP:all", str(path)], capture_output=True, check=True)
    document: dict[str, Any] = json.loads(out.stdout)[0]
    return document


def listed(document: dict[str, Any], tag: str) -> list[str]:
    """A keyword list as read, always a list of text."""
    value = document.get(tag, [])
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def with_existing_xmp(data: bytes, suffix: str, tmp_path: Path, *arguments: str) -> bytes:
    """The bytes of a file after exiftool wrote some metadata a user already had."""
    path = tmp_path / f"seed-{uuid.uuid4().hex}{suffix}"
    path.write_bytes(data)
    subprocess.run([EXIFTOOL, "-overwrite_original", *arguments, str(path)], capture_output=True, check=True)
    return path.read_bytes()


@dataclass
class Library:
    """A tenant with a finished job of stored, analyzed files."""

    client: TestClient
    tenant: TenantWithKey
    job_id: uuid.UUID
    storage: LocalStorage
    assets: dict[str, uuid.UUID]
    originals: dict[str, bytes]

    def write(self, **body: Any) -> dict[str, Any]:
        """Start a write-back through the API and run its task; the finished write-back with its items."""
        started = self.client.post("/api/v1/writeback", json=body, headers=self.tenant.headers)
        assert started.status_code == 202, started.text
        assert started.json()["status"] == "running"
        run_writeback(started.json()["id"])
        detail = self.client.get(f"/api/v1/writeback/{started.json()['id']}", headers=self.tenant.headers)
        assert detail.status_code == 200
        result: dict[str, Any] = detail.json()
        return result

    def original(self, name: str) -> bytes:
        """The asset's current file as the API serves it."""
        answer = self.client.get(f"/api/v1/assets/{self.assets[name]}/original", headers=self.tenant.headers)
        assert answer.status_code == 200
        return answer.content

    def items(self, write: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """A write-back's items by file name."""
        return {item["name"]: item for item in write["items"]}


def add_asset(
    storage: LocalStorage,
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    name: str,
    data: bytes,
    mime: str,
    kind: str,
    size: tuple[int, int] | None,
    tags: dict[str, float],
) -> uuid.UUID:
    """Store a file and record it as analyzed, with its tags."""
    digest = sha256(data)
    key = blob_key(tenant_id, digest)
    storage.put_bytes(key, data)
    with session_scope() as session:
        asset = Asset(
            tenant_id=tenant_id,
            job_id=job_id,
            sha256=digest,
            media_kind=kind,
            mime_type=mime,
            size_bytes=len(data),
            storage_key=key,
            original_name=name,
            status=AssetStatus.DONE,
            width=size[0] if size else None,
            height=size[1] if size else None,
        )
        session.add(asset)
        session.flush()
        session.add_all(
            ResultTag(tenant_id=tenant_id, asset_id=asset.id, analyzer="clip", tag=tag, score=score)
            for tag, score in tags.items()
        )
        return asset.id


def add_faces(asset_id: uuid.UUID, tenant_id: uuid.UUID, faces: list[tuple[tuple[float, ...], str | None]]) -> None:
    """Face rows of an asset, each in a person with that name (or an unnamed one)."""
    with session_scope() as session:
        for index, (box, name) in enumerate(faces):
            person = Person(tenant_id=tenant_id, name=name, face_count=1)
            session.add(person)
            session.flush()
            session.add(
                Face(
                    tenant_id=tenant_id,
                    asset_id=asset_id,
                    face_index=index,
                    box=list(box),
                    probability=0.99,
                    person_id=person.id,
                    assigned_by="user",
                )
            )


@pytest.fixture
def library(orch_env: OrchestratorEnv, shared_media: Path, tmp_path: Path) -> Library:
    get_settings.cache_clear()
    client = TestClient(create_app())
    tenant = make_tenant("studio")
    storage = LocalStorage(orch_env.data_dir / "media")
    with session_scope() as session:
        job = Job(tenant_id=tenant.id, name="holiday", status=JobStatus.DONE, analyzers=["clip", "faces"])
        session.add(job)
        session.flush()
        job_id = job.id
    zidane = with_existing_xmp(
        (shared_media / "zidane.jpg").read_bytes(),
        ".jpg",
        tmp_path,
        "-XMP-dc:Subject=Holiday",
        "-XMP-digiKam:TagsList=Places/Paris",
        "-XMP-lr:HierarchicalSubject=Places|Paris",
    )
    files = {
        "zidane.jpg": (zidane, "image/jpeg", "image", (1280, 720), {"person/man": 0.9, "sport/football": 0.4}),
        "blue.png": (png_bytes(64, 48), "image/png", "image", (64, 48), {"color/blue": 0.8}),
        "clip.mp4": (
            (shared_media / "talking_zidane_bus.mp4").read_bytes(),
            "video/mp4",
            "video",
            None,
            {"vehicle/bus": 0.7},
        ),
        "speech.wav": ((shared_media / "speech_en.wav").read_bytes(), "audio/wav", "audio", None, {"speech/talk": 0.9}),
        "broken.jpg": (b"\xff\xd8\xff\xe0" + b"\x00garbage" * 200, "image/jpeg", "image", (64, 48), {"thing/x": 0.9}),
    }
    assets = {
        name: add_asset(
            storage,
            tenant_id=tenant.id,
            job_id=job_id,
            name=name,
            data=data,
            mime=mime,
            kind=kind,
            size=size,
            tags=tags,
        )
        for name, (data, mime, kind, size, tags) in files.items()
    }
    with session_scope() as session:
        clip = session.get(Asset, assets["clip.mp4"])
        assert clip is not None
        clip.width, clip.height = 640, 360
    add_faces(assets["zidane.jpg"], tenant.id, [(ZIDANE_FACES[0], "Zinedine Zidane"), (ZIDANE_FACES[1], None)])
    return Library(client, tenant, job_id, storage, assets, {name: f[0] for name, f in files.items()})


def test_a_jobs_tags_people_and_face_regions_are_written_and_read_back(library: Library, tmp_path: Path) -> None:
    write = library.write(job_id=str(library.job_id))

    items = library.items(write)
    assert write["status"] == "done"
    assert {name: item["status"] for name, item in items.items()} == {
        "zidane.jpg": "written",
        "blue.png": "written",
        "clip.mp4": "written",
        "speech.wav": "skipped",
        "broken.jpg": "failed",
    }
    assert "not supported" in items["speech.wav"]["error"] and "audio/wav" in items["speech.wav"]["error"]
    assert items["broken.jpg"]["error"]
    assert write["summary"] == {"written": 3, "unchanged": 0, "skipped": 1, "failed": 1}

    photo = read_xmp(library.original("zidane.jpg"), ".jpg", tmp_path)
    assert set(listed(photo, "TagsList")) == {
        "Places/Paris",
        "AI/Person/man",
        "AI/Sport/football",
        "AI/People/Zinedine Zidane",
    }
    assert set(listed(photo, "HierarchicalSubject")) == {
        "Places|Paris",
        "AI|Person|man",
        "AI|Sport|football",
        "AI|People|Zinedine Zidane",
    }
    assert set(listed(photo, "Subject")) == {"Holiday", "man", "football", "Zinedine Zidane"}
    regions = photo["RegionInfo"]
    assert regions["AppliedToDimensions"] == {"W": 1280, "H": 720, "Unit": "pixel"}
    named, unnamed = regions["RegionList"]
    assert named["Name"] == "Zinedine Zidane" and named["Type"] == "Face" and "Name" not in unnamed
    assert named["Area"]["Unit"] == "normalized"
    assert named["Area"]["X"] == pytest.approx(750 / 1280, abs=1e-6) and named["Area"]["Y"] == pytest.approx(
        160 / 720, abs=1e-6
    )
    assert named["Area"]["W"] == pytest.approx(100 / 1280, abs=1e-6) and named["Area"]["H"] == pytest.approx(
        120 / 720, abs=1e-6
    )
    assert unnamed["Area"]["X"] == pytest.approx(230 / 1280, abs=1e-6) and unnamed["Area"]["Y"] == pytest.approx(
        340 / 720, abs=1e-6
    )

    assert listed(read_xmp(library.original("blue.png"), ".png", tmp_path), "TagsList") == ["AI/Color/blue"]
    assert listed(read_xmp(library.original("clip.mp4"), ".mp4", tmp_path), "HierarchicalSubject") == ["AI|Vehicle|bus"]
    assert library.original("speech.wav") == library.originals["speech.wav"]
    assert library.original("broken.jpg") == library.originals["broken.jpg"]
    with session_scope() as session:
        photo_row = session.get(Asset, library.assets["zidane.jpg"])
        assert photo_row is not None and photo_row.sha256 == sha256(library.originals["zidane.jpg"])
        assert (
            photo_row.storage_key
            == f"tenants/{library.tenant.id.hex}/written/{uuid.UUID(write['id']).hex}/"
            + (items["zidane.jpg"]["new_sha256"])
        )
    download = library.client.get(
        f"/api/v1/assets/{library.assets['zidane.jpg']}/download", headers=library.tenant.headers
    )
    assert sha256(download.content) == items["zidane.jpg"]["new_sha256"]


def test_undo_restores_the_exact_original_bytes_and_deletes_the_written_copies(library: Library) -> None:
    write = library.write(job_id=str(library.job_id))
    written_keys = _item_keys(uuid.UUID(write["id"]))
    assert written_keys and all(library.storage.exists(key) for key in written_keys)

    undone = library.client.post(f"/api/v1/writeback/{write['id']}/undo", headers=library.tenant.headers)
    again = library.client.post(f"/api/v1/writeback/{write['id']}/undo", headers=library.tenant.headers)

    assert undone.status_code == 200 and undone.json()["status"] == "undone"
    assert again.status_code == 200 and again.json()["undone_at"] == undone.json()["undone_at"]
    for name, data in library.originals.items():
        assert sha256(library.original(name)) == sha256(data), name
    assert not any(library.storage.exists(key) for key in written_keys)
    with session_scope() as session:
        photo = session.get(Asset, library.assets["zidane.jpg"])
        assert photo is not None and photo.size_bytes == len(library.originals["zidane.jpg"])


def test_replace_swaps_our_keywords_and_regions_while_append_keeps_everything(library: Library, tmp_path: Path) -> None:
    photo_id = library.assets["zidane.jpg"]
    library.write(asset_ids=[str(photo_id)], mode="append")
    with session_scope() as session:
        session.execute(delete(ResultTag).where(ResultTag.asset_id == photo_id))
        session.add(
            ResultTag(tenant_id=library.tenant.id, asset_id=photo_id, analyzer="clip", tag="scene/beach", score=0.8)
        )
        session.execute(delete(Face).where(Face.asset_id == photo_id))
    add_faces(photo_id, library.tenant.id, [((0.1, 0.1, 0.3, 0.5), "Grace Hopper")])

    appended = library.write(asset_ids=[str(photo_id)], mode="append")
    after_append = read_xmp(library.original("zidane.jpg"), ".jpg", tmp_path)
    replaced = library.write(asset_ids=[str(photo_id)], mode="replace")
    after_replace = read_xmp(library.original("zidane.jpg"), ".jpg", tmp_path)

    assert appended["items"][0]["status"] == replaced["items"][0]["status"] == "written"
    assert {"AI/Person/man", "AI/Scene/beach", "Places/Paris"} <= set(listed(after_append, "TagsList"))
    assert [r.get("Name") for r in after_append["RegionInfo"]["RegionList"]] == [
        "Zinedine Zidane",
        None,
        "Grace Hopper",
    ]
    assert set(listed(after_replace, "TagsList")) == {"Places/Paris", "AI/Scene/beach", "AI/People/Grace Hopper"}
    assert set(listed(after_replace, "Subject")) == {"Holiday", "beach", "Grace Hopper"}
    assert [r.get("Name") for r in after_replace["RegionInfo"]["RegionList"]] == ["Grace Hopper"]
    area = after_replace["RegionInfo"]["RegionList"][0]["Area"]
    assert (area["X"], area["Y"], area["W"], area["H"]) == pytest.approx((0.2, 0.3, 0.2, 0.4))


def test_writing_the_same_again_in_append_mode_leaves_the_file_unchanged(library: Library) -> None:
    photo_id = str(library.assets["zidane.jpg"])
    first = library.write(asset_ids=[photo_id])
    current = library.original("zidane.jpg")

    second = library.write(asset_ids=[photo_id])

    assert first["items"][0]["status"] == "written" and second["items"][0]["status"] == "unchanged"
    assert library.original("zidane.jpg") == current


def test_an_earlier_write_back_cannot_be_undone_before_a_later_one_of_the_same_file(library: Library) -> None:
    photo_id = str(library.assets["blue.png"])
    first = library.write(asset_ids=[photo_id], min_score=0.0)
    with session_scope() as session:
        session.add(
            ResultTag(
                tenant_id=library.tenant.id,
                asset_id=uuid.UUID(photo_id),
                analyzer="clip",
                tag="shape/square",
                score=0.9,
            )
        )
    second = library.write(asset_ids=[photo_id])

    refused = library.client.post(f"/api/v1/writeback/{first['id']}/undo", headers=library.tenant.headers)
    assert refused.status_code == 409 and refused.json()["detail"]["code"] == "undo_refused"
    assert second["id"] in refused.json()["detail"]["message"]
    assert (
        library.client.post(f"/api/v1/writeback/{second['id']}/undo", headers=library.tenant.headers).status_code == 200
    )
    assert (
        library.client.post(f"/api/v1/writeback/{first['id']}/undo", headers=library.tenant.headers).status_code == 200
    )
    assert library.original("blue.png") == library.originals["blue.png"]


def test_hostile_tags_and_names_are_written_literally_or_refused_never_read_as_options(
    library: Library, tmp_path: Path
) -> None:
    photo_id = library.assets["blue.png"]
    literal = ['O\'Brien, "Jr" {x} [y]', "Anne -overwrite_original =x", "a=b,c", "$HOME @argfile"]
    refused = ["-execute", "line\nbreak", "base64:aGk="]
    with session_scope() as session:
        session.add_all(
            ResultTag(tenant_id=library.tenant.id, asset_id=photo_id, analyzer="clip", tag=f"odd/{label}", score=0.9)
            for label in ["x=1, -y", "-tagsFromFile", "--"]
        )
    add_faces(photo_id, library.tenant.id, [((1, 1, 10, 10), name) for name in literal + refused])

    write = library.write(asset_ids=[str(photo_id)])

    document = read_xmp(library.original("blue.png"), ".png", tmp_path)
    assert write["items"][0]["status"] == "written"
    assert set(listed(document, "Subject")) == {"blue", "x=1, -y", *literal}
    assert {r.get("Name") for r in document["RegionInfo"]["RegionList"]} == {*literal, None}
    reasons = {r["tag"]: r["reason"] for r in write["items"][0]["written"]["rejected"]}
    assert set(reasons) == {"odd/-tagsFromFile", "odd/--", *refused}
    assert "Overwrite" not in json.dumps(document) and library.storage.root.joinpath("tmp").is_dir()


def test_the_originals_zip_holds_every_current_file_under_a_safe_unique_name(library: Library) -> None:
    write = library.write(job_id=str(library.job_id))
    with session_scope() as session:
        png = session.get(Asset, library.assets["blue.png"])
        assert png is not None
        png.original_name = "../../zidane.jpg"

    answer = library.client.get(f"/api/v1/jobs/{library.job_id}/originals.zip", headers=library.tenant.headers)

    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    names = archive.namelist()
    assert names == ["zidane.jpg", "zidane (2).jpg", "clip.mp4", "speech.wav", "broken.jpg"]
    assert all(".." not in n and not n.startswith("/") for n in names)
    items = library.items(write)
    assert sha256(archive.read("zidane.jpg")) == items["zidane.jpg"]["new_sha256"]
    assert sha256(archive.read("zidane (2).jpg")) == items["blue.png"]["new_sha256"]
    assert archive.read("speech.wav") == library.originals["speech.wav"]


def test_another_tenant_can_neither_see_start_nor_undo_a_write_back(library: Library) -> None:
    write = library.write(job_id=str(library.job_id))
    other = make_tenant("elsewhere")
    calls = [
        ("GET", f"/api/v1/writeback/{write['id']}", None),
        ("POST", f"/api/v1/writeback/{write['id']}/undo", None),
        ("POST", "/api/v1/writeback", {"job_id": str(library.job_id)}),
        ("POST", "/api/v1/writeback", {"asset_ids": [str(library.assets["blue.png"])]}),
        ("GET", f"/api/v1/jobs/{library.job_id}/originals.zip", None),
    ]
    for method, url, body in calls:
        answer = library.client.request(method, url, json=body, headers=other.headers)
        assert answer.status_code == 404 and answer.json()["detail"]["code"] == "not_found", (method, url)
    listing = library.client.get("/api/v1/writeback", headers=other.headers).json()
    assert listing == {"data": [], "count": 0}
    assert library.client.get(f"/api/v1/writeback/{write['id']}", headers=library.tenant.headers).json()["status"] == (
        "done"
    )


def test_a_job_still_being_analyzed_cannot_be_written_back(library: Library) -> None:
    with session_scope() as session:
        job = session.get(Job, library.job_id)
        assert job is not None
        job.status = JobStatus.RUNNING

    answer = library.client.post(
        "/api/v1/writeback", json={"job_id": str(library.job_id)}, headers=library.tenant.headers
    )
    neither = library.client.post("/api/v1/writeback", json={"mode": "append"}, headers=library.tenant.headers)

    assert answer.status_code == 409 and answer.json()["detail"]["code"] == "writeback_not_ready"
    assert neither.status_code == 422


def _item_keys(write_id: uuid.UUID) -> list[str]:
    with session_scope() as session:
        keys = session.scalars(
            select(MetadataWriteItem.new_storage_key).where(
                MetadataWriteItem.write_id == write_id, MetadataWriteItem.new_storage_key.is_not(None)
            )
        )
        return [k for k in keys if k is not None]


def test_the_job_page_writes_back_lists_the_write_back_and_undoes_it(library: Library) -> None:
    browser = signed_in_client(library.client.app, tenant_name="studio")  # type: ignore[arg-type]
    page = browser.get(f"/jobs/{library.job_id}")
    assert "Write tags into the files" in page.text and f"/api/v1/jobs/{library.job_id}/originals.zip" in page.text

    no_token = browser.post(f"/jobs/{library.job_id}/writeback", data={"mode": "append", "faces": "1"})
    started = browser.post(
        f"/jobs/{library.job_id}/writeback",
        data={"mode": "replace", "faces": "1", "csrf_token": browser.csrf_token},
        follow_redirects=False,
    )

    assert no_token.status_code == 403
    assert started.status_code == 303 and started.headers["location"] == f"/jobs/{library.job_id}#writeback"
    writes = library.client.get("/api/v1/writeback", headers=library.tenant.headers).json()["data"]
    assert [(w["mode"], w["scope"]["faces"]) for w in writes] == [("replace", True)]
    run_writeback(writes[0]["id"])
    listed_page = browser.get(f"/jobs/{library.job_id}")
    assert f'action="/writeback/{writes[0]["id"]}/undo"' in listed_page.text
    undone = browser.post(
        f"/writeback/{writes[0]['id']}/undo", data={"csrf_token": browser.csrf_token}, follow_redirects=False
    )
    assert undone.status_code == 303
    assert library.original("zidane.jpg") == library.originals["zidane.jpg"]
    asset_page = browser.get(f"/assets/{library.assets['zidane.jpg']}")
    assert "Download original (with metadata)" in asset_page.text
