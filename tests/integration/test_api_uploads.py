"""Uploads through the REST API, on SQLite + the embedded queue and on PostgreSQL + Redis.

The rules of DESIGN.md, "The path of one file": each file is stored under a generated key, hashed while streaming,
sniffed by its bytes (never by its name), size-limited, and deduplicated per tenant by hash. One bad file is
rejected with a reason; the rest of the job goes on. A malformed request leaves nothing half-written.

No Celery worker runs here: accepted files enqueue their prepare task on the real broker of the environment, and the
tests prepare assets by calling ``orchestrator.ingest.prepare_asset`` directly.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import json
import re
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import create_engine, func, select, text

from orchestrator.api.main import create_app
from orchestrator.db.models import Asset, Job
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus
from orchestrator.ingest import prepare_asset
from orchestrator.settings import get_settings
from orchestrator.storage import LocalStorage, blob_key
from orchestrator.tasks.constants import TASK_PREPARE_ASSET
from tests.fixtures.factories import TenantWithKey, bomb_png, jpeg_bytes, make_tenant, truncated_jpeg
from tests.fixtures.services import OrchestratorEnv

pytestmark = pytest.mark.integration

UPLOAD_LIMIT_BYTES = 200_000
# starlette's TestClient answers with an httpx2 (or, on older versions, httpx) response.
ClientResponse = Any
BLOB_KEY = re.compile(r"^tenants/[0-9a-f]{32}/blobs/[0-9a-f]{2}/[0-9a-f]{64}$")


@functools.cache
def _bomb() -> bytes:
    return bomb_png()  # ~0.7 s to build; the bytes never change


def _jpeg(seed: int) -> bytes:
    """A small valid JPEG whose bytes differ for every seed."""
    return jpeg_bytes(32 + seed % 50, 24 + seed // 50, ((seed * 37) % 256, (seed * 91) % 256, 128))


@dataclass
class Api:
    """A test client on the orchestrator environment, with one tenant and its media store."""

    client: TestClient
    env: OrchestratorEnv
    tenant: TenantWithKey

    @property
    def media(self) -> Path:
        return self.env.data_dir / "media"

    @property
    def storage(self) -> LocalStorage:
        return LocalStorage(self.media)

    def new_job(self, headers: dict[str, str] | None = None, **body: object) -> str:
        answer = self.client.post(
            "/api/v1/jobs", json={"name": "uploads", **body}, headers=headers or self.tenant.headers
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    def upload(
        self, job_id: str, parts: list[tuple[bytes, bytes]], headers: dict[str, str] | None = None
    ) -> ClientResponse:
        body, content_type = multipart(parts)
        return self.client.post(
            f"/api/v1/jobs/{job_id}/files",
            content=body,
            headers={**(headers or self.tenant.headers), "Content-Type": content_type},
        )

    def stored_files(self) -> list[Path]:
        """Every file of the media store outside its temporary folder."""
        tmp = self.media / "tmp"
        return sorted(p for p in self.media.rglob("*") if p.is_file() and tmp not in p.parents)

    def tmp_files(self) -> list[Path]:
        return sorted((self.media / "tmp").rglob("*"))


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body with file fields named ``files``. Filenames are raw bytes, put on the wire as
    they are (clients and attackers can send any byte but CR there)."""
    boundary = boundary or uuid.uuid4().hex.encode()
    body = bytearray()
    for filename, data in parts:
        body += b"--" + boundary + b"\r\n"
        body += b'Content-Disposition: form-data; name="files"; filename="' + filename + b'"\r\n'
        body += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    return bytes(body), f"multipart/form-data; boundary={boundary.decode()}"


def _assets(job_id: str | None = None) -> list[Asset]:
    with session_scope() as session:
        query = select(Asset).order_by(Asset.created_at, Asset.id)
        if job_id is not None:
            query = query.where(Asset.job_id == uuid.UUID(job_id))
        return list(session.scalars(query))


def _count(model: type[Asset] | type[Job]) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _queued_prepare_tasks(env: OrchestratorEnv) -> list[str]:
    """Asset ids of the prepare tasks waiting on the environment's real broker (Celery message protocol 2)."""
    if env.broker_url.startswith("redis"):
        client = redis.Redis.from_url(env.broker_url)
        try:
            envelopes = [json.loads(m) for m in client.lrange("ingest", 0, -1)]
        finally:
            client.close()
    else:
        engine = create_engine(env.broker_url.removeprefix("sqla+"))
        try:
            with engine.connect() as connection:
                payloads = connection.execute(text("SELECT payload FROM kombu_message")).scalars()
                envelopes = [json.loads(p) for p in payloads]
        finally:
            engine.dispose()
    ids = []
    for envelope in envelopes:
        if envelope["headers"]["task"] == TASK_PREPARE_ASSET:
            args = json.loads(base64.b64decode(envelope["body"]))[0]
            ids.append(args[0])
    return sorted(ids)


def _client(monkeypatch: pytest.MonkeyPatch, **env: str) -> TestClient:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return TestClient(create_app())


@pytest.fixture
def api(orch_env: OrchestratorEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The API with a small upload limit (200 kB), so that a too-large file is cheap to send."""
    with _client(monkeypatch, ORCH_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT_BYTES)) as client:
        yield Api(client=client, env=orch_env, tenant=make_tenant())


def _summary(answer: ClientResponse) -> list[tuple[str, int, str | None]]:
    return [(f["status"], f["status_code"], f["code"]) for f in answer.json()["files"]]


def test_truncated_jpeg_fails_alone_while_the_rest_of_the_job_completes(api: Api) -> None:
    good, truncated = jpeg_bytes(), truncated_jpeg()
    too_large = b"\xff\xd8\xff\xe0" + bytes(UPLOAD_LIMIT_BYTES + 50_000)
    job_id = api.new_job()

    answer = api.upload(
        job_id,
        [
            (b"good.jpg", good),
            (b"photo.jpg", b"Dear diary, this file only pretends to be a photo.\n" * 20),
            (b"empty.jpg", b""),
            (b"truncated.jpg", truncated),
            (b"bomb.png", _bomb()),
            (b"huge.jpg", too_large),
        ],
    )

    assert answer.status_code == 207, answer.text
    assert _summary(answer) == [
        ("accepted", 201, None),
        ("rejected", 415, "not_media"),
        ("rejected", 422, "empty_file"),
        ("accepted", 201, None),
        ("rejected", 422, "decompression_bomb"),
        ("rejected", 413, "file_too_large"),
    ]
    assert (answer.json()["accepted"], answer.json()["rejected"]) == (2, 4)
    files = answer.json()["files"]
    assert [f["name"] for f in files] == ["good.jpg", "photo.jpg", "empty.jpg", "truncated.jpg", "bomb.png", "huge.jpg"]
    assert files[5]["size"] == len(too_large), "the size of a too-large file is still counted"

    rows = {a.original_name: a for a in _assets(job_id)}
    assert len(rows) == 6
    for name in ("photo.jpg", "empty.jpg", "bomb.png", "huge.jpg"):
        assert rows[name].status == AssetStatus.FAILED and rows[name].storage_key is None, name
    assert {name: rows[name].error_code for name in rows if rows[name].status == AssetStatus.FAILED} == {
        "photo.jpg": "not_media",
        "empty.jpg": "empty_file",
        "bomb.png": "decompression_bomb",
        "huge.jpg": "file_too_large",
    }
    assert rows["good.jpg"].sha256 == hashlib.sha256(good).hexdigest()
    assert rows["good.jpg"].mime_type == "image/jpeg"
    assert len(api.stored_files()) == 2, "only the accepted files are stored"
    assert api.tmp_files() == []
    assert _queued_prepare_tasks(api.env) == sorted(str(rows[n].id) for n in ("good.jpg", "truncated.jpg"))

    with session_scope() as session:
        settings = get_settings()
        for name in ("good.jpg", "truncated.jpg"):
            prepare_asset(
                session, storage=api.storage, asset_id=rows[name].id, max_image_pixels=settings.max_image_pixels
            )

    after = {
        a["name"]: a for a in api.client.get(f"/api/v1/jobs/{job_id}/assets", headers=api.tenant.headers).json()["data"]
    }
    assert after["good.jpg"]["status"] == "prepared"
    assert (after["good.jpg"]["width"], after["good.jpg"]["height"]) == (64, 48)
    assert (after["truncated.jpg"]["status"], after["truncated.jpg"]["error_code"]) == ("failed", "truncated")
    thumbnail = api.client.get(f"/api/v1/assets/{after['good.jpg']['id']}/thumbnail", headers=api.tenant.headers)
    assert thumbnail.status_code == 200 and thumbnail.content.startswith(b"\xff\xd8\xff")
    progress = api.client.get(f"/api/v1/jobs/{job_id}", headers=api.tenant.headers).json()["progress"]
    assert (progress["total"], progress["prepared"], progress["failed"]) == (6, 1, 5)


def test_an_image_above_the_configured_pixel_limit_is_rejected_as_image_too_large(
    orch_env: OrchestratorEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _client(monkeypatch, ORCH_MAX_IMAGE_PIXELS="10000") as client:
        api = Api(client=client, env=orch_env, tenant=make_tenant())
        job_id = api.new_job()

        answer = api.upload(job_id, [(b"small.jpg", jpeg_bytes(100, 100)), (b"wide.jpg", jpeg_bytes(101, 100))])

    assert answer.status_code == 207, answer.text
    assert _summary(answer) == [("accepted", 201, None), ("rejected", 422, "image_too_large")]
    assert "10000" in answer.json()["files"][1]["message"]
    assert len(api.stored_files()) == 1


def test_all_files_rejected_alike_answer_with_their_shared_code(api: Api) -> None:
    job_id = api.new_job()

    answer = api.upload(job_id, [(b"a.txt", b"plain text"), (b"b.html", b"<html></html>")])

    assert answer.status_code == 415
    assert _summary(answer) == [("rejected", 415, "not_media"), ("rejected", 415, "not_media")]


@pytest.mark.parametrize("orch_env", ["sqlite"], indirect=True)  # upload checks; the database does not matter
def test_a_heic_photo_is_accepted_and_prepared(api: Api) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    buffer = io.BytesIO()
    pillow_heif.from_pillow(Image.new("RGB", (64, 48), (10, 200, 30))).save(buffer, quality=80)
    job_id = api.new_job()

    answer = api.upload(job_id, [(b"IMG_0001.HEIC", buffer.getvalue())])

    assert answer.status_code == 201, answer.text
    (row,) = _assets(job_id)
    assert row.mime_type == "image/heic"
    with session_scope() as session:
        assert prepare_asset(session, storage=api.storage, asset_id=row.id, max_image_pixels=10**8)


@pytest.mark.parametrize("orch_env", ["sqlite"], indirect=True)  # upload checks; the database does not matter
def test_rejection_messages_do_not_reveal_server_paths(api: Api) -> None:
    job_id = api.new_job()

    answer = api.upload(job_id, [(b"broken.jpg", b"\xff\xd8\xff\xe0" + bytes(2000))])

    assert _summary(answer) == [("rejected", 422, "decode_failed")]
    (row,) = _assets(job_id)
    shown = [answer.json()["files"][0]["message"], row.error_message or ""]
    assert not [m for m in shown if str(api.env.data_dir) in m or ".part" in m], shown


HOSTILE_NAMES = [
    (b"../../etc/passwd.jpg", "passwd.jpg"),
    (b"..\\..\\..\\windows\\win.ini.jpg", "win.ini.jpg"),
    (b"C:\\x\\..\\evil.jpg", "evil.jpg"),
    (b"nul\x00byte.jpg", "nulbyte.jpg"),
    (b"new\nline.jpg", "newline.jpg"),
    (b"\x1b[2J\x1b]0;owned\x07esc.jpg", "[2J]0;ownedesc.jpg"),
    ("right\u202egpj.exe".encode(), "rightgpj.exe"),
    ("/tmp/\u00e9t\u00e9 \u6771\u4eac.jpg".encode(), "\u00e9t\u00e9 \u6771\u4eac.jpg"),
]


def test_hostile_filenames_are_stored_under_generated_keys_and_shown_sanitized(api: Api) -> None:
    etc_passwd = Path("/etc/passwd").stat() if Path("/etc/passwd").exists() else None
    contents = [_jpeg(i) for i in range(len(HOSTILE_NAMES))]
    job_id = api.new_job()

    answer = api.upload(job_id, [(raw, data) for (raw, _), data in zip(HOSTILE_NAMES, contents, strict=True)])

    assert answer.status_code == 201, answer.text
    assert [f["name"] for f in answer.json()["files"]] == [shown for _, shown in HOSTILE_NAMES]
    rows = _assets(job_id)
    assert len(rows) == len(HOSTILE_NAMES)
    for row, data, (_, shown) in zip(rows, contents, HOSTILE_NAMES, strict=True):
        assert row.original_name == shown
        assert row.storage_key == blob_key(api.tenant.id, hashlib.sha256(data).hexdigest())
        assert BLOB_KEY.match(row.storage_key)
        stem = shown.rsplit(".", 1)[0]
        assert stem not in row.storage_key and "passwd" not in row.storage_key and ".." not in row.storage_key
        assert (api.media / row.storage_key).read_bytes() == data
        detail = api.client.get(f"/api/v1/assets/{row.id}", headers=api.tenant.headers).json()
        assert detail["name"] == shown
    assert api.stored_files() == sorted(api.media / str(r.storage_key) for r in rows)
    assert api.tmp_files() == []
    # Nothing named after an upload exists anywhere: not in the data folder, not beside it, not in /etc or /tmp.
    names = {shown for _, shown in HOSTILE_NAMES} | {"passwd.jpg", "win.ini.jpg", "evil.jpg"}
    beside = api.env.data_dir.parent  # pytest's folder of this session's tests
    assert not [p for p in beside.rglob("*") if p.name in names | {"passwd"}]
    assert not [p for root in (Path("/etc"), Path("/tmp")) for p in root.iterdir() if p.name in names]
    if etc_passwd is not None:
        assert Path("/etc/passwd").stat().st_mtime_ns == etc_passwd.st_mtime_ns


def test_duplicate_bytes_in_one_job_are_reported_and_stored_once(api: Api) -> None:
    data = _jpeg(7)
    job_id = api.new_job()

    answer = api.upload(job_id, [(b"first.jpg", data), (b"again.jpg", data)])
    again = api.upload(job_id, [(b"third-time.jpg", data)])

    assert answer.status_code == 207
    first, duplicate = answer.json()["files"]
    assert (first["status"], duplicate["status"], duplicate["status_code"], duplicate["code"]) == (
        "accepted",
        "duplicate",
        409,
        "duplicate",
    )
    assert duplicate["asset_id"] == first["asset_id"]
    assert again.status_code == 409 and again.json()["files"][0]["asset_id"] == first["asset_id"]
    assert [str(a.id) for a in _assets(job_id)] == [first["asset_id"]]
    assert len(api.stored_files()) == 1


def test_the_same_bytes_in_two_jobs_of_a_tenant_share_one_blob_but_not_across_tenants(api: Api) -> None:
    data = _jpeg(11)
    job_a, job_b = api.new_job(), api.new_job()
    other = make_tenant()
    job_other = api.new_job(headers=other.headers)

    answers = [
        api.upload(job_a, [(b"x.jpg", data)]),
        api.upload(job_b, [(b"y.jpg", data)]),
        api.upload(job_other, [(b"z.jpg", data)], headers=other.headers),
    ]

    assert [a.status_code for a in answers] == [201, 201, 201]
    (row_a,), (row_b,), (row_other,) = _assets(job_a), _assets(job_b), _assets(job_other)
    assert row_a.id != row_b.id
    assert row_a.storage_key == row_b.storage_key
    assert row_other.storage_key != row_a.storage_key, "deduplication is per tenant, never across tenants"
    assert row_a.storage_key is not None and row_other.storage_key is not None
    assert api.stored_files() == sorted([api.media / row_a.storage_key, api.media / row_other.storage_key])


def _malformed_requests(boundary: str) -> dict[str, tuple[bytes, str]]:
    b = boundary.encode()
    head = b"--" + b + b'\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n'
    head += b"Content-Type: image/jpeg\r\n\r\n"
    multipart_type = f"multipart/form-data; boundary={boundary}"
    return {
        "json instead of multipart": (b'{"files": []}', "application/json"),
        "multipart without a boundary": (head + jpeg_bytes() + b"\r\n--" + b + b"--\r\n", "multipart/form-data"),
        "no content type": (jpeg_bytes(), ""),
        "body cut off inside the headers": (head[:40], multipart_type),
        "body cut off inside the file, no closing boundary": (head + jpeg_bytes()[:300], multipart_type),
        "file complete but no boundary after it": (head + jpeg_bytes() + b"\r\n", multipart_type),
        "only a form field, no file part": (
            b"--" + b + b'\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--' + b + b"--\r\n",
            multipart_type,
        ),
        "no parts at all": (b"--" + b + b"--\r\n", multipart_type),
        "empty body": (b"", multipart_type),
        "a part header over the parser's 4 KiB limit": (
            head[:-4] + b"; x=" + b"y" * 100_000 + b"\r\n\r\n" + jpeg_bytes() + b"\r\n--" + b + b"--\r\n",
            multipart_type,
        ),
        "too many headers in one part": (
            head[:-2]
            + b"".join(b"X-H%d: v\r\n" % i for i in range(50))
            + b"\r\n"
            + jpeg_bytes()
            + b"\r\n--"
            + b
            + b"--\r\n",
            multipart_type,
        ),
        "garbage instead of a part": (b"--" + b + b"\r\n\x00\x01\x02 not a header\r\n\r\n", multipart_type),
    }


def test_malformed_uploads_answer_400_and_leave_no_rows_and_no_files(api: Api) -> None:
    job_id = api.new_job()
    problems = []

    for case, (body, content_type) in _malformed_requests("b0undary").items():
        headers = {**api.tenant.headers, "Content-Type": content_type}
        if not content_type:
            headers = {**api.tenant.headers}
        answer = api.client.post(f"/api/v1/jobs/{job_id}/files", content=body, headers=headers)

        if answer.status_code != 400 or answer.json()["detail"]["code"] != "malformed_upload":
            problems.append(f"{case}: {answer.status_code} {answer.text[:200]}")
        if _count(Asset) or api.stored_files() or api.tmp_files():
            problems.append(f"{case}: left {_count(Asset)} rows, {api.stored_files()}, tmp {api.tmp_files()}")

    assert problems == []


@pytest.mark.parametrize("orch_env", ["sqlite"], indirect=True)  # upload parsing; the database does not matter
def test_a_body_cut_off_after_a_complete_file_answers_400_and_keeps_nothing(api: Api) -> None:
    job_id = api.new_job()
    body, content_type = multipart([(b"whole.jpg", _jpeg(1)), (b"cut.jpg", _jpeg(2))])
    cut = body[: body.index(b"cut.jpg") + 200]

    answer = api.client.post(
        f"/api/v1/jobs/{job_id}/files", content=cut, headers={**api.tenant.headers, "Content-Type": content_type}
    )

    assert answer.status_code == 400
    assert _count(Asset) == 0
    assert api.stored_files() == [] and api.tmp_files() == []


def test_job_creation_errors_answer_with_a_code_and_create_nothing(api: Api) -> None:
    headers = {**api.tenant.headers, "Content-Type": "application/json"}

    unknown = api.client.post("/api/v1/jobs", json={"analyzers": ["clip", "mind-reader"]}, headers=api.tenant.headers)
    invalid = api.client.post("/api/v1/jobs", content=b'{"name": "x", ', headers=headers)
    extra = api.client.post("/api/v1/jobs", json={"name": "x", "budget": 10}, headers=api.tenant.headers)

    assert (unknown.status_code, unknown.json()["detail"]["code"]) == (409, "unknown_analyzer")
    assert "mind-reader" in unknown.json()["detail"]["message"]
    assert (invalid.status_code, invalid.json()["detail"]["code"]) == (422, "invalid_request")
    assert (extra.status_code, extra.json()["detail"]["code"]) == (422, "invalid_request")
    assert _count(Job) == 0
    assert api.stored_files() == [] and api.tmp_files() == []


def test_uploading_to_a_sealed_job_answers_409_job_sealed(api: Api) -> None:
    job_id = api.new_job()
    assert api.upload(job_id, [(b"a.jpg", _jpeg(1))]).status_code == 201
    seal = api.client.post(f"/api/v1/jobs/{job_id}/seal", headers=api.tenant.headers)
    assert seal.status_code == 200 and seal.json()["status"] == "queued"

    answer = api.upload(job_id, [(b"b.jpg", _jpeg(2))])

    assert (answer.status_code, answer.json()["detail"]["code"]) == (409, "job_sealed")
    assert len(_assets(job_id)) == 1
    assert len(api.stored_files()) == 1 and api.tmp_files() == []
    sealed_again = api.client.post(f"/api/v1/jobs/{job_id}/seal", headers=api.tenant.headers)
    assert sealed_again.status_code == 200 and sealed_again.json()["sealed_at"] == seal.json()["sealed_at"]


def test_download_returns_the_exact_bytes_with_a_content_disposition_that_cannot_inject_headers(api: Api) -> None:
    data = _jpeg(5)
    raw_name = b'r\xc3\xa9sum\xc3\xa9 \\"q\\";\nSet-Cookie: session=stolen;\x00 x=1.jpg'
    job_id = api.new_job()
    uploaded = api.upload(job_id, [(raw_name, data), (b"notes.jpg", b"text only")]).json()["files"]
    accepted, rejected = uploaded[0], uploaded[1]

    answer = api.client.get(f"/api/v1/assets/{accepted['asset_id']}/download", headers=api.tenant.headers)

    assert answer.status_code == 200
    assert answer.content == data
    assert answer.headers["content-type"] == "image/jpeg"
    assert answer.headers["content-length"] == str(len(data))
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in answer.headers
    disposition = answer.headers["content-disposition"]
    match = re.fullmatch(r"attachment; filename\*=UTF-8''([A-Za-z0-9%._~!*'()-]*)", disposition)
    assert match, disposition
    assert unquote(match.group(1)) == accepted["name"] == 'résumé "q";Set-Cookie: session=stolen; x=1.jpg'
    refused = api.client.get(f"/api/v1/assets/{rejected['asset_id']}/download", headers=api.tenant.headers)
    assert (refused.status_code, refused.json()["detail"]["code"]) == (404, "not_found")


LARGE_BYTES = 30 * 1024 * 1024
LARGE_CHUNK_BYTES = 256 * 1024


def test_a_large_upload_is_streamed_to_disk_not_held_in_memory(
    orch_env: OrchestratorEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 MB go through the real ASGI app while tracemalloc watches every Python allocation of this process (the
    server and its worker threads included): the peak stays a small fraction of the file."""
    get_settings.cache_clear()
    app = create_app()
    tenant = make_tenant()
    boundary = uuid.uuid4().hex
    digest = hashlib.sha256()
    block = hashlib.shake_256(b"large").digest(LARGE_CHUNK_BYTES)

    async def body(size: int = LARGE_BYTES) -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="film.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        header = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
        digest.update(header)
        yield header
        for i in range((size - len(header)) // LARGE_CHUNK_BYTES):
            piece = i.to_bytes(4, "big") + block[4:]
            digest.update(piece)
            yield piece
        yield f"\r\n--{boundary}--\r\n".encode()

    async def upload() -> tuple[httpx.Response, int, str]:
        nonlocal digest
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as client:
            # A small upload first, untraced: what the first request of a process loads once (modules, caches)
            # is not what this test is about, and whether this worker process already had it depends on the order.
            warm = await client.post("/api/v1/jobs", json={"name": "warm-up"})
            warmed = await client.post(
                f"/api/v1/jobs/{warm.json()['id']}/files",
                content=body(2 * LARGE_CHUNK_BYTES),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            assert warmed.status_code == 201, warmed.text
            digest = hashlib.sha256()
            job = await client.post("/api/v1/jobs", json={"name": "large"})
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                answer = await client.post(
                    f"/api/v1/jobs/{job.json()['id']}/files",
                    content=body(),
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                    timeout=120,
                )
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            return answer, peak, job.json()["id"]

    answer, peak_bytes, job_id = asyncio.run(upload())

    assert answer.status_code == 201, answer.text
    (uploaded,) = answer.json()["files"]
    assert uploaded["size"] > LARGE_BYTES - LARGE_CHUNK_BYTES
    assert uploaded["sha256"] == digest.hexdigest()
    (row,) = _assets(job_id)
    assert row.storage_key is not None
    stored = orch_env.data_dir / "media" / row.storage_key
    assert stored.stat().st_size == uploaded["size"]
    assert peak_bytes < LARGE_BYTES / 4, f"peak Python memory {peak_bytes / 1e6:.1f} MB for a 30 MB upload"
