"""Duplicates on SQLite and PostgreSQL: a library of real photos, copies of them (resized, re-encoded, cropped) and
unrelated pictures groups exactly each original with its copies; the same file in two jobs is an exact duplicate;
a dismissed group stays hidden until a new copy joins it; the REST API, the dashboard page and the command line
show a tenant only its own groups.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, update
from typer.testing import CliRunner

from orchestrator import cli
from orchestrator.api.main import create_app
from orchestrator.client import ApiClient
from orchestrator.client_config import ClientConfig
from orchestrator.db.models import Asset, DuplicateDismissal
from orchestrator.db.session import session_scope
from orchestrator.duplicates.hashing import backfill_phashes
from orchestrator.duplicates.phash import FLAT_HASH
from orchestrator.duplicates.service import Criteria, DuplicateKind, duplicate_groups
from orchestrator.ingest import prepare_asset
from orchestrator.settings import get_settings
from orchestrator.storage import LocalStorage
from tests.fixtures.factories import TenantWithKey, jpeg_bytes, make_tenant
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.web import signed_in_client

pytestmark = pytest.mark.integration

PHOTOS = ("bus.jpg", "zidane.jpg", "grace_hopper.jpg")
NEAR = {"kind": "near"}


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def library_files(media: Path) -> tuple[dict[str, bytes], list[set[str]]]:
    """Three photos with three copies each, five unrelated generated pictures and a blank one; and the groups a
    person would make of them."""
    files: dict[str, bytes] = {}
    expected: list[set[str]] = []
    for name in PHOTOS:
        stem = name.removesuffix(".jpg")
        photo = Image.open(media / name).convert("RGB")
        width, height = photo.size
        files[name] = (media / name).read_bytes()
        files[f"{stem}-small.jpg"] = _jpeg(photo.resize((width // 3, height // 3), Image.Resampling.BICUBIC))
        files[f"{stem}-q60.jpg"] = _jpeg(photo, quality=60)
        crop = (width // 40, height // 40, width - width // 40, height - height // 40)
        files[f"{stem}-cropped.png"] = _png(photo.crop(crop))
        expected.append({name, f"{stem}-small.jpg", f"{stem}-q60.jpg", f"{stem}-cropped.png"})
    rng = np.random.default_rng(2026)
    for index in range(5):
        cells = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
        files[f"generated-{index}.png"] = _png(Image.fromarray(cells).resize((480, 360), Image.Resampling.BICUBIC))
    files["blank.jpg"] = jpeg_bytes(200, 150, (20, 20, 20))
    return files, expected


@dataclass
class Library:
    """A tenant's uploaded and prepared files on a running API."""

    client: TestClient
    env: OrchestratorEnv
    tenant: TenantWithKey

    def upload(self, files: dict[str, bytes], *, job_name: str = "photos") -> dict[str, str]:
        """Upload ``files`` into a new job and prepare them as the prepare task does; returns name -> asset id."""
        job = self.client.post("/api/v1/jobs", json={"name": job_name}, headers=self.tenant.headers).json()
        parts = [("files", (name, data)) for name, data in files.items()]
        answer = self.client.post(f"/api/v1/jobs/{job['id']}/files", files=parts, headers=self.tenant.headers)
        assert answer.status_code == 201, answer.text
        ids = {entry["name"]: entry["asset_id"] for entry in answer.json()["files"]}
        storage = LocalStorage(self.env.data_dir / "media")
        with session_scope() as session:
            for asset_id in ids.values():
                assert prepare_asset(session, storage=storage, asset_id=uuid.UUID(asset_id), max_image_pixels=10**8)
        return ids

    def groups(self, **params: object) -> dict[str, object]:
        answer = self.client.get("/api/v1/duplicates", params=params, headers=self.tenant.headers)
        assert answer.status_code == 200, answer.text
        body: dict[str, object] = answer.json()
        return body


def _names(body: dict[str, object]) -> list[set[str]]:
    groups = body["data"]
    assert isinstance(groups, list)
    return [{item["name"] for item in group["items"]} for group in groups]


@pytest.fixture
def library(orch_env: OrchestratorEnv) -> Iterator[Library]:
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        yield Library(client=client, env=orch_env, tenant=make_tenant("studio"))


def test_near_duplicate_groups_are_exactly_each_photo_with_its_resized_reencoded_and_cropped_copies(
    library: Library, shared_media: Path
) -> None:
    files, expected = library_files(shared_media)
    library.upload(files)

    body = library.groups(kind="near")

    assert sorted(map(sorted, _names(body))) == sorted(map(sorted, expected))
    assert body["count"] == 3 and body["hidden"] == 0 and body["threshold"] == 8
    for group in body["data"]:  # type: ignore[attr-defined]
        first, *rest = group["items"]
        assert first["reason"] is None and all(item["reason"].startswith("phash distance") for item in rest)
        assert group["reason"].startswith("near: phash distance")
        assert all(item["thumbnail_url"] and item["width"] and item["size"] > 0 for item in group["items"])
    assert library.groups()["count"] == 0, "no file was uploaded twice"


def test_a_stricter_threshold_keeps_only_the_closest_copies(library: Library, shared_media: Path) -> None:
    files, _ = library_files(shared_media)
    library.upload(files)

    strict = _names(library.groups(kind="near", threshold=0))

    assert all(len(group) < 4 for group in strict)
    assert all(
        name.split("-")[0].removesuffix(".jpg") == next(iter(g)).split("-")[0].removesuffix(".jpg")
        for g in strict
        for name in g
    )


def test_every_picture_and_video_gets_a_perceptual_hash_when_prepared_and_audio_none(
    library: Library, shared_media: Path
) -> None:
    ids = library.upload(
        {
            "bus.jpg": (shared_media / "bus.jpg").read_bytes(),
            "clip.mp4": (shared_media / "talking_zidane_bus.mp4").read_bytes(),
            "speech.wav": (shared_media / "speech_en.wav").read_bytes(),
            "blank.jpg": jpeg_bytes(),
        }
    )

    with session_scope() as session:
        hashes = {name: session.get(Asset, uuid.UUID(asset_id)).phash for name, asset_id in ids.items()}  # type: ignore[union-attr]
    assert hashes["speech.wav"] is None
    assert hashes["blank.jpg"] == FLAT_HASH
    assert all(len(hashes[n] or "") == 16 and hashes[n] != FLAT_HASH for n in ("bus.jpg", "clip.mp4"))


def test_the_backfill_hashes_assets_prepared_without_a_hash_exactly_as_preparing_does(
    library: Library, shared_media: Path
) -> None:
    files, _ = library_files(shared_media)
    ids = library.upload(files)
    with session_scope() as session:
        before = {asset_id: value for asset_id, value in session.execute(select(Asset.id, Asset.phash))}
        session.execute(update(Asset).values(phash=None))

    with session_scope() as session:
        report = backfill_phashes(session, storage=LocalStorage(library.env.data_dir / "media"))
    with session_scope() as session:
        again = backfill_phashes(session, storage=LocalStorage(library.env.data_dir / "media"))
        after = {asset_id: value for asset_id, value in session.execute(select(Asset.id, Asset.phash))}

    assert report.hashed == len(ids) and report.unreadable == 0 and again.hashed == 0
    assert after == before


def test_the_same_file_in_several_jobs_is_one_exact_group_and_dismissing_hides_it_until_another_copy_joins(
    library: Library, shared_media: Path
) -> None:
    bus = (shared_media / "bus.jpg").read_bytes()
    first = library.upload({"bus.jpg": bus, "zidane.jpg": (shared_media / "zidane.jpg").read_bytes()}, job_name="a")
    second = library.upload({"bus-again.jpg": bus}, job_name="b")

    body = library.groups()
    assert _names(body) == [{"bus.jpg", "bus-again.jpg"}]
    group = body["data"][0]  # type: ignore[index]
    assert [item["id"] for item in group["items"]] == [first["bus.jpg"], second["bus-again.jpg"]]
    assert group["reason"].startswith("same bytes") and group["items"][1]["reason"] == "same bytes as bus.jpg"

    dismissed = library.client.post(f"/api/v1/duplicates/{group['key']}/dismiss", headers=library.tenant.headers)
    assert dismissed.status_code == 200, dismissed.text
    again = library.client.post(f"/api/v1/duplicates/{group['key']}/dismiss", headers=library.tenant.headers)
    assert again.status_code == 200, "dismissing twice is harmless"
    hidden = library.groups()
    assert hidden["count"] == 0 and hidden["hidden"] == 1

    library.upload({"bus-third.jpg": bus}, job_name="c")

    grown = library.groups()
    assert _names(grown) == [{"bus.jpg", "bus-again.jpg", "bus-third.jpg"}] and grown["hidden"] == 0
    assert grown["data"][0]["key"] != group["key"]  # type: ignore[index]


def test_dismissing_a_near_group_needs_the_threshold_it_was_found_with(library: Library, shared_media: Path) -> None:
    files, _ = library_files(shared_media)
    library.upload(files)
    key = library.groups(kind="near")["data"][0]["key"]  # type: ignore[index]

    stale = library.client.post(
        f"/api/v1/duplicates/{key}/dismiss", params={"kind": "near", "threshold": 0}, headers=library.tenant.headers
    )
    found = library.client.post(f"/api/v1/duplicates/{key}/dismiss", params=NEAR, headers=library.tenant.headers)

    assert stale.status_code == 404 and stale.json()["detail"]["code"] == "not_found"
    assert found.status_code == 200
    after = library.groups(kind="near")
    assert after["count"] == 2 and after["hidden"] == 1


def test_another_tenant_sees_no_group_and_cannot_dismiss_one(library: Library, shared_media: Path) -> None:
    bus = (shared_media / "bus.jpg").read_bytes()
    library.upload({"bus.jpg": bus}, job_name="a")
    library.upload({"bus.jpg": bus}, job_name="b")
    key = library.groups()["data"][0]["key"]  # type: ignore[index]
    other = make_tenant("other")

    listed = library.client.get("/api/v1/duplicates", headers=other.headers)
    dismissed = library.client.post(f"/api/v1/duplicates/{key}/dismiss", headers=other.headers)

    assert listed.status_code == 200 and listed.json()["data"] == [] and "bus.jpg" not in listed.text
    assert dismissed.status_code == 404 and dismissed.json()["detail"]["code"] == "not_found"
    with session_scope() as session:
        assert session.scalars(select(DuplicateDismissal)).all() == []
    assert library.groups()["count"] == 1


@pytest.mark.parametrize(
    "params", [{"kind": "similar"}, {"kind": "near", "threshold": 13}, {"threshold": -1}, {"similarity": 0.2}]
)
def test_bad_query_values_answer_422(library: Library, params: dict[str, object]) -> None:
    answer = library.client.get("/api/v1/duplicates", params=params, headers=library.tenant.headers)

    assert answer.status_code == 422 and answer.json()["detail"]["code"] == "invalid_request"


def test_a_malformed_group_key_answers_404(library: Library) -> None:
    answer = library.client.post("/api/v1/duplicates/not-a-key/dismiss", headers=library.tenant.headers)

    assert answer.status_code == 404 and answer.json()["detail"]["code"] == "not_found"


def test_the_service_pages_groups_largest_first(library: Library, shared_media: Path) -> None:
    files, _ = library_files(shared_media)
    files["bus-q40.jpg"] = _jpeg(Image.open(shared_media / "bus.jpg"), quality=40)
    library.upload(files)

    with session_scope() as session:
        first = duplicate_groups(
            session, tenant_id=library.tenant.id, criteria=Criteria(kind=DuplicateKind.NEAR), limit=1
        )
        rest = duplicate_groups(
            session, tenant_id=library.tenant.id, criteria=Criteria(kind=DuplicateKind.NEAR), limit=5, offset=1
        )

    assert first.total == rest.total == 3
    assert [len(g.items) for g in first.groups] == [5] and [len(g.items) for g in rest.groups] == [4, 4]
    assert "bus.jpg" in {item.name for item in first.groups[0].items}


def test_the_dashboard_shows_groups_side_by_side_and_not_duplicates_hides_one(
    library: Library, shared_media: Path
) -> None:
    bus = (shared_media / "bus.jpg").read_bytes()
    library.upload({"bus.jpg": bus}, job_name="a")
    library.upload({"bus-copy.jpg": bus}, job_name="b")
    browser = signed_in_client(library.client.app, tenant_name="studio")

    page = browser.get("/duplicates")

    assert page.status_code == 200
    assert "bus.jpg" in page.text and "bus-copy.jpg" in page.text and "same bytes as bus.jpg" in page.text
    assert "Not duplicates" in page.text and 'href="/duplicates"' in page.text
    key = library.groups()["data"][0]["key"]  # type: ignore[index]
    assert f'action="/duplicates/{key}/dismiss"' in page.text

    refused = browser.post(f"/duplicates/{key}/dismiss", data={"csrf_token": "wrong", "kind": "exact"})
    assert refused.status_code == 403 and library.groups()["count"] == 1
    done = browser.post(f"/duplicates/{key}/dismiss", data={"csrf_token": browser.csrf_token, "kind": "exact"})

    assert done.status_code == 200 and "Marked as not duplicates" in done.text
    assert "bus-copy.jpg" not in done.text and "1 marked as not duplicates" in done.text
    near = browser.get("/duplicates", params={"kind": "near", "threshold": "99"})
    assert near.status_code == 200 and 'value="12"' in near.text


def test_the_duplicates_command_lists_the_groups(
    library: Library, shared_media: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = (shared_media / "bus.jpg").read_bytes()
    ids = library.upload({"bus.jpg": bus}, job_name="a")
    library.upload({"bus-copy.jpg": bus}, job_name="b")

    def to_the_app(request: httpx.Request) -> httpx.Response:
        """Hands the command's request to the real app in this process."""
        answer = library.client.request(
            request.method, str(request.url), headers=dict(request.headers), content=request.content
        )
        return httpx.Response(answer.status_code, headers=dict(answer.headers), content=answer.content)

    def make_client(config: ClientConfig) -> ApiClient:
        return ApiClient("http://testserver", config.api_key, transport=httpx.MockTransport(to_the_app))

    monkeypatch.setattr(cli, "make_client", make_client)
    env = {"ORCH_API_URL": "http://testserver", "ORCH_API_KEY": library.tenant.key, "COLUMNS": "250"}

    exact = CliRunner().invoke(cli.app, ["duplicates"], env=env)
    near = CliRunner().invoke(cli.app, ["duplicates", "--near", "--threshold", "4"], env=env)

    assert exact.exit_code == 0, (exact.output, exact.exception)
    assert "1 exact duplicate group" in exact.output and ids["bus.jpg"] in exact.output
    assert near.exit_code == 0, near.output
    assert "1 near duplicate group" in near.output and "phash distance 0" in near.output
