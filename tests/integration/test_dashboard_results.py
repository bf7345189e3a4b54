"""The gallery and asset pages, and the original bytes behind them, signed in as a tenant's member, on SQLite and
PostgreSQL.

Results are stored as the real analyzers write them (gpu_worker/models: YOLO detections and per-frame detections for
video, MTCNN faces with probabilities, Whisper segments, CLIP and classifier NSFW scores), boxes relative to the
analyzed image; the pages draw them as percentages of the media's size.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from sqlalchemy import update

from orchestrator.api.main import create_app
from orchestrator.db.models import Asset, Result, ResultTag
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus
from orchestrator.ingest import prepare_asset
from orchestrator.settings import get_settings
from orchestrator.storage import LocalStorage
from orchestrator.tenant_settings import set_tenant_settings
from tests.fixtures.factories import jpeg_bytes, make_tenant
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.web import SignedInClient, signed_in_client

pytestmark = pytest.mark.integration

PHOTO = jpeg_bytes(320, 240, (90, 140, 200))


@pytest.fixture
def client(orch_env: OrchestratorEnv) -> SignedInClient:
    get_settings.cache_clear()
    return signed_in_client(create_app(), tenant_name=f"acme-{uuid.uuid4().hex[:6]}")


def _upload(client: SignedInClient, files: list[tuple[str, bytes]], *, prepare: bool = True) -> list[str]:
    """Upload through the REST API with the dashboard's cookie, as upload.js does; returns the asset ids."""
    csrf = {"X-CSRF-Token": client.csrf_token}
    job = client.post("/api/v1/jobs", json={"name": "pictures"}, headers=csrf).json()
    ids = []
    for name, data in files:
        answer = client.post(f"/api/v1/jobs/{job['id']}/files", files={"files": (name, data)}, headers=csrf).json()
        ids.append(answer["files"][0]["asset_id"])
    if prepare:
        storage = LocalStorage(get_settings().media_dir)
        with session_scope() as session:
            for asset_id in ids:
                prepare_asset(session, storage=storage, asset_id=uuid.UUID(asset_id), max_image_pixels=10**8)
    return ids


def _analyzed(asset_id: str, payloads: dict[str, dict[str, Any]], tags: dict[str, float] | None = None) -> None:
    """Store results for an asset and mark it done."""
    with session_scope() as session:
        asset = session.get(Asset, uuid.UUID(asset_id))
        assert asset is not None
        for analyzer, payload in payloads.items():
            session.add(
                Result(tenant_id=asset.tenant_id, asset_id=asset.id, analyzer=analyzer, model_id="m", payload=payload)
            )
        for tag, score in (tags or {}).items():
            session.add(ResultTag(tenant_id=asset.tenant_id, asset_id=asset.id, analyzer="clip", tag=tag, score=score))
        asset.status = AssetStatus.DONE


def _threshold(client: SignedInClient, value: float) -> None:
    assert client.tenant_id is not None
    with session_scope() as session:
        set_tenant_settings(
            session, tenant_id=client.tenant_id, analyzers=["clip"], vocabulary=None, nsfw_threshold=value
        )


IMAGE_RESULTS: dict[str, dict[str, Any]] = {
    "objects": {
        "image_width": 320,
        "image_height": 240,
        "detections": [
            {"label": "person", "class_id": 0, "class_name": "person", "score": 0.91, "box": [0.1, 0.2, 0.5, 0.6]},
            {"label": "dog", "class_id": 16, "class_name": "dog", "score": 0.55, "box": [0.6, 0.5, 0.9, 0.95]},
            {"label": "broken", "score": 0.5, "box": [0.7, 0.1]},
            {"label": "inside-out", "score": 0.5, "box": [0.8, 0.8, 0.2, 0.2]},
        ],
        "counts": {"person": 1, "dog": 1},
        "person_count": 1,
    },
    "faces": {
        "face_count": 1,
        "image_width": 320,
        "image_height": 240,
        "faces": [{"box": [0.2, 0.25, 0.3, 0.4], "landmarks": [], "probability": 0.993, "size_px": 30.0}],
    },
    "clip": {"vocabulary": "default", "categories": {}, "nsfw_score": 0.2, "nsfw_classifier_score": 0.04},
}


# --- gallery --------------------------------------------------------------------------------------------------


def test_the_gallery_shows_lazy_thumbnails_linking_to_each_asset(client: SignedInClient) -> None:
    first, second = _upload(client, [("cat.jpg", PHOTO), ("dog.jpg", jpeg_bytes(64, 64, (1, 2, 3)))])
    _analyzed(first, {}, {"animal/cat": 0.9})
    _analyzed(second, {}, {"animal/dog": 0.8})

    page = client.get("/gallery")

    assert page.status_code == 200
    cards = re.findall(r'<a class="asset-card" href="/assets/([0-9a-f-]+)"', page.text)
    assert cards == [second, first], "newest first"
    assert f'<img loading="lazy" decoding="async" src="/api/v1/assets/{first}/thumbnail" alt="cat.jpg"' in page.text
    assert 'id="gallery-count">2 assets' in page.text
    assert client.get(f"/api/v1/assets/{first}/thumbnail").headers["content-type"] == "image/jpeg"


def test_gallery_filters_narrow_the_cards_and_bad_values_are_named_on_the_page(client: SignedInClient) -> None:
    cat, dog = _upload(client, [("cat.jpg", PHOTO), ("dog.jpg", jpeg_bytes(64, 64, (1, 2, 3)))])
    _analyzed(cat, {}, {"animal/cat": 0.9})
    _analyzed(dog, {}, {"animal/dog": 0.8})

    cats = client.get("/gallery", params={"tag": "animal/cat"})
    animals = client.get("/gallery", params={"tag": "animal/*", "kind": "image", "status": "done"})
    bad = client.get("/gallery", params={"kind": "pdf", "from": "someday", "tag": "a*b", "cursor": "forged"})

    assert re.findall(r'href="/assets/([0-9a-f-]+)"', cats.text) == [cat]
    assert len(re.findall(r'class="asset-card"', animals.text)) == 2
    assert 'value="animal/*"' in animals.text, "the datalist offers each category as a prefix"
    assert bad.status_code == 200 and 'id="filter-errors"' in bad.text
    for field in ("kind", "from", "tag", "cursor"):
        assert f"<strong>{field}</strong>" in bad.text
    assert len(re.findall(r'class="asset-card"', bad.text)) == 2, "bad filters are left out, the page still shows"


def test_the_gallery_pages_with_cursor_links_that_keep_the_filters(client: SignedInClient) -> None:
    ids = _upload(client, [(f"{n}.jpg", jpeg_bytes(16 + n, 16, (n, n, n))) for n in range(50)], prepare=False)
    for asset_id in ids:
        _analyzed(asset_id, {}, {"scene/test": 0.5})

    first = client.get("/gallery", params={"tag": "scene/test"})
    older = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert older, first.text
    second = client.get(older.group(1).replace("&amp;", "&"))

    assert len(re.findall(r'class="asset-card"', first.text)) == 48
    assert "tag=scene%2Ftest" in older.group(1)
    assert re.findall(r'href="/assets/([0-9a-f-]+)"', second.text) == [ids[1], ids[0]]
    assert 'rel="prev"' in second.text and 'rel="next"' not in second.text


def test_thumbnails_above_the_tenants_nsfw_threshold_are_blurred(client: SignedInClient) -> None:
    risky, safe = _upload(client, [("a.jpg", PHOTO), ("b.jpg", jpeg_bytes(64, 64, (1, 2, 3)))])
    _analyzed(risky, {"clip": {"nsfw_score": 0.9}})
    _analyzed(safe, {"clip": {"nsfw_score": 0.1}})

    page = client.get("/gallery").text

    assert re.search(rf'src="/api/v1/assets/{risky}/thumbnail" alt="a.jpg"\s+class="nsfw-blur" data-nsfw', page)
    assert re.search(rf'src="/api/v1/assets/{safe}/thumbnail" alt="b.jpg"\s*>', page)
    assert 'id="show-all-nsfw"' in page


def test_the_gallery_never_shows_another_tenants_assets(client: SignedInClient) -> None:
    other = make_tenant()
    job = client.post("/api/v1/jobs", json={}, headers=other.headers).json()
    theirs = client.post(
        f"/api/v1/jobs/{job['id']}/files", files={"files": ("secret.jpg", PHOTO)}, headers=other.headers
    ).json()["files"][0]["asset_id"]

    page = client.get("/gallery", params={"job": job["id"]})

    assert theirs not in page.text and "secret.jpg" not in page.text and 'id="gallery-count">0 assets' in page.text


# --- asset page -----------------------------------------------------------------------------------------------


def test_an_image_page_draws_object_and_face_boxes_tags_and_details(client: SignedInClient) -> None:
    (asset_id,) = _upload(client, [("street.jpg", PHOTO)])
    _analyzed(asset_id, IMAGE_RESULTS, {"objects/person": 0.91, "animal/dog": 0.55, "faces/one": 0.993})

    page = client.get(f"/assets/{asset_id}")

    assert page.status_code == 200
    assert f'<img id="media" src="/api/v1/assets/{asset_id}/original" alt="street.jpg"' in page.text
    objects = re.findall(r'<div class="box box-object" style="([^"]+)"', page.text)
    faces = re.findall(r'<div class="box box-face" style="([^"]+)"', page.text)
    assert objects == [
        "left: 10.0%; top: 20.0%; width: 40.0%; height: 40.0%",
        "left: 60.0%; top: 50.0%; width: 30.0%; height: 45.0%",
    ], "malformed boxes are left out"
    assert faces == ["left: 20.0%; top: 25.0%; width: 10.0%; height: 15.0%"]
    assert ">person 0.91<" in page.text and ">face 0.99<" in page.text
    assert 'id="toggle-boxes"' in page.text
    assert re.findall(r'<li class="tag" data-tag="([^"]+)">', page.text) == [
        "faces/one",
        "objects/person",
        "animal/dog",
    ]
    assert "nsfw-blur" not in page.text and 'id="nsfw-score">0.040<' in page.text, "the classifier's score counts"


def test_media_above_the_nsfw_threshold_is_blurred_with_a_show_button(client: SignedInClient) -> None:
    (asset_id,) = _upload(client, [("beach.jpg", PHOTO)])
    _analyzed(asset_id, IMAGE_RESULTS)

    default = client.get(f"/assets/{asset_id}").text
    _threshold(client, 0.03)
    strict = client.get(f"/assets/{asset_id}").text

    assert "nsfw-blur" not in default
    assert 'class="nsfw-blur" data-nsfw' in strict and 'id="show-nsfw"' in strict
    assert "above your threshold of 0.03" in strict


def test_a_video_page_has_a_player_boxes_per_frame_and_a_transcript_that_seeks(client: SignedInClient) -> None:
    (asset_id,) = _upload(client, [("clip.jpg", PHOTO)], prepare=False)
    with session_scope() as session:
        session.execute(
            update(Asset).where(Asset.id == uuid.UUID(asset_id)).values(media_kind="video", mime_type="video/mp4")
        )
    _analyzed(
        asset_id,
        {
            "objects": {
                "person_count": 1,
                "counts": {"person": 1},
                "frames": [
                    {"timestamp_s": 0.0, "detections": [{"label": "person", "score": 0.8, "box": [0, 0, 0.5, 0.5]}]},
                    {"timestamp_s": 2.5, "detections": [{"label": "person", "score": 0.7, "box": [0.5, 0.5, 1, 1]}]},
                ],
            },
            "faces": {
                "face_count": 1,
                "faces": [{"timestamp_s": 2.5, "frame": 1, "box": [0.6, 0.6, 0.7, 0.7], "probability": 0.97}],
            },
            "transcribe": {
                "language": "en",
                "text": "hello there general",
                "segments": [
                    {"start": 0.0, "end": 1.2, "text": "hello there"},
                    {"start": 12.5, "end": 14.0, "text": " general"},
                    {"start": "bad", "text": "dropped"},
                ],
            },
        },
    )

    page = client.get(f"/assets/{asset_id}").text

    assert f'<video id="media" controls preload="metadata" src="/api/v1/assets/{asset_id}/original"' in page
    boxes = re.findall(
        r'<div class="box (box-\w+)" style="[^"]+"(?: data-edge="top")?\s+data-t="([\d.]+)"( hidden)?>', page
    )
    assert boxes == [("box-object", "0.0", ""), ("box-object", "2.5", " hidden"), ("box-face", "2.5", " hidden")]
    seeks = re.findall(r'<button type="button" class="seek" data-t="([\d.]+)"[^>]*>([^<]+)<', page)
    assert seeks == [("0.0", "0:00"), ("12.5", "0:12")]
    assert "general" in page and "dropped" not in page


def test_a_failed_asset_shows_its_error(client: SignedInClient) -> None:
    (asset_id,) = _upload(client, [("broken.jpg", jpeg_bytes()[:200])])

    page = client.get(f"/assets/{asset_id}")

    assert page.status_code == 200 and 'id="asset-error"' in page.text
    with session_scope() as session:
        asset = session.get(Asset, uuid.UUID(asset_id))
        assert asset is not None and asset.error_code is not None
        assert asset.error_code in page.text


def test_asset_pages_answer_404_for_another_tenants_asset_a_bad_id_or_a_missing_one(client: SignedInClient) -> None:
    other = make_tenant()
    job = client.post("/api/v1/jobs", json={}, headers=other.headers).json()
    theirs = client.post(
        f"/api/v1/jobs/{job['id']}/files", files={"files": ("private.jpg", PHOTO)}, headers=other.headers
    ).json()["files"][0]["asset_id"]

    for asset_id in (theirs, "../etc/passwd", "12", str(uuid.uuid4())):
        answer = client.get(f"/assets/{asset_id}")
        assert answer.status_code == 404 and "text/html" in answer.headers["content-type"], asset_id
        assert "private.jpg" not in answer.text


# --- the original bytes ---------------------------------------------------------------------------------------


def test_the_original_is_served_inline_with_its_type_and_range_requests(client: SignedInClient) -> None:
    (asset_id,) = _upload(client, [("photo.jpg", PHOTO)], prepare=False)
    url = f"/api/v1/assets/{asset_id}/original"
    size = len(PHOTO)

    whole = client.get(url)
    head = client.get(url, headers={"Range": "bytes=0-99"})
    tail = client.get(url, headers={"Range": "bytes=-10"})
    rest = client.get(url, headers={"Range": f"bytes={size - 5}-"})
    beyond = client.get(url, headers={"Range": f"bytes={size}-"})

    assert whole.status_code == 200 and whole.content == PHOTO
    assert whole.headers["content-type"] == "image/jpeg" and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["x-content-type-options"] == "nosniff"
    assert whole.headers["content-disposition"].startswith("inline")
    assert (head.status_code, head.headers["content-range"], head.content) == (206, f"bytes 0-99/{size}", PHOTO[:100])
    assert (tail.status_code, tail.content) == (206, PHOTO[-10:])
    assert (rest.status_code, rest.headers["content-range"]) == (206, f"bytes {size - 5}-{size - 1}/{size}")
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"


def test_the_original_is_never_served_as_html_or_svg(client: SignedInClient) -> None:
    (asset_id,) = _upload(client, [("photo.jpg", PHOTO)], prepare=False)
    url = f"/api/v1/assets/{asset_id}/original"

    served = {}
    for mime in ("text/html", "image/svg+xml", None):
        with session_scope() as session:
            session.execute(update(Asset).where(Asset.id == uuid.UUID(asset_id)).values(mime_type=mime))
        served[mime] = client.get(url).headers["content-type"]

    assert set(served.values()) == {"application/octet-stream"}


def test_the_original_answers_404_for_another_tenant_and_for_a_rejected_upload(client: SignedInClient) -> None:
    (mine,) = _upload(client, [("photo.jpg", PHOTO)], prepare=False)
    (rejected,) = _upload(client, [("notes.txt", b"just text")], prepare=False)
    other = make_tenant()

    theirs = client.get(f"/api/v1/assets/{mine}/original", headers=other.headers)
    nothing = client.get(f"/api/v1/assets/{rejected}/original")

    assert (theirs.status_code, theirs.json()["detail"]["code"]) == (404, "not_found")
    assert (nothing.status_code, nothing.json()["detail"]["code"]) == (404, "not_found")
