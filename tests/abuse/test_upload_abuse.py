"""The upload abuse corpus through the real API (SQLite and the embedded queue; the database plays no part in these
checks): every hostile file gets a clear reason, the good files of its batch are still analysed, hostile names never
become paths, and nothing escapes the media store."""

from __future__ import annotations

import hashlib
import io
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

import orchestrator.backends.in_process as in_process
from orchestrator.api.main import create_app
from orchestrator.batching import plan_batches
from orchestrator.db.models import Asset
from orchestrator.db.session import session_scope
from orchestrator.settings import get_settings
from orchestrator.storage import blob_key
from orchestrator.tasks.jobs import analyze_batch, finalize_job_task, prepare_asset
from tests.abuse.corpus import MARKER, Body, hostile_files, hostile_names, multipart_stream
from tests.abuse.filesystem import paths_named_with, unexpected_store_files
from tests.fixtures.factories import TenantWithKey, make_tenant
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.tiny_models import draw_shape

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("orch_env", ["sqlite"], indirect=True)]

LIMIT_BYTES = 200_000
SHAPES = {"clip": {"vocabulary": {"shape": ["red square", "blue circle"]}, "threshold": 0.0, "nsfw": False}}
STORED_KEY = re.compile(r"^tenants/[0-9a-f]{32}/blobs/[0-9a-f]{2}/[0-9a-f]{64}$")


def shape_jpeg(colour: str, shape: str, seed: int) -> bytes:
    """A photo the tiny CLIP recognises."""
    buffer = io.BytesIO()
    draw_shape(colour, shape, size=128, rng=random.Random(seed)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@dataclass
class Api:
    """The API with a 200 kB upload limit, one tenant, and the orchestrator's data folder."""

    client: TestClient
    tenant: TenantWithKey
    env: OrchestratorEnv

    @property
    def media(self) -> Path:
        return self.env.data_dir / "media"

    def new_job(self) -> str:
        answer = self.client.post(
            "/api/v1/jobs",
            json={"name": "abuse", "analyzers": ["clip"], "options": SHAPES},
            headers=self.tenant.headers,
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    def upload(self, job_id: str, parts: list[tuple[bytes, Body]]) -> Any:
        """One multipart request, streamed (chunked), with the parts' raw names on the wire."""
        boundary = uuid.uuid4().hex
        return self.client.post(
            f"/api/v1/jobs/{job_id}/files",
            content=multipart_stream(parts, boundary),
            headers={**self.tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )

    def get(self, path: str) -> Any:
        return self.client.get(path, headers=self.tenant.headers)


@pytest.fixture
def api(orch_env: OrchestratorEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("ORCH_MAX_UPLOAD_BYTES", str(LIMIT_BYTES))
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        yield Api(client, make_tenant(), orch_env)


def test_each_hostile_file_gets_its_reason_and_the_good_files_of_its_batch_are_still_analysed(
    api: Api, tiny_clip_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(in_process, "_executor", None)  # built afresh on the tiny CLIP of tiny_clip_env
    corpus = hostile_files(limit_bytes=LIMIT_BYTES)
    good = {b"red.jpg": shape_jpeg("red", "square", 1), b"blue.jpg": shape_jpeg("blue", "circle", 2)}
    parts: list[tuple[bytes, Body]] = [(b"red.jpg", good[b"red.jpg"])]
    parts += [(h.name, h.data) for h in corpus]
    parts += [(b"blue.jpg", good[b"blue.jpg"])]
    job_id = api.new_job()

    answer = api.upload(job_id, parts)

    assert answer.status_code == 207, answer.text
    files = answer.json()["files"]
    got = {f["name"]: (f["status"], f["status_code"], f["code"]) for f in files}
    assert got == {
        "red.jpg": ("accepted", 201, None),
        "blue.jpg": ("accepted", 201, None),
        **{h.name.decode(): h.expected for h in corpus},
    }
    for file in files:
        if file["status"] == "rejected":
            assert file["message"] and len(file["message"]) > 15, file
    oversized = next(f for f in files if f["code"] == "file_too_large")
    assert oversized["size"] == 2 * LIMIT_BYTES and str(LIMIT_BYTES) in oversized["message"]

    # The whole job goes on: prepare, plan and analyse as the Celery tasks do (called directly, in-process CLIP).
    accepted = [f for f in files if f["status"] == "accepted"]
    prepared = {f["name"]: prepare_asset(f["asset_id"]) for f in accepted}
    assert prepared == {n: not n.startswith("half-") for n in prepared}
    assert api.client.post(f"/api/v1/jobs/{job_id}/seal", headers=api.tenant.headers).status_code == 200
    with session_scope() as session:
        batch_ids = plan_batches(session, job_id=uuid.UUID(job_id), batch_size=16, max_attempts=3)
    assert batch_ids is not None and len(batch_ids) == 1
    assert analyze_batch(str(batch_ids[0])) == "done"
    finalize_job_task(job_id)

    job = api.get(f"/api/v1/jobs/{job_id}").json()
    assert job["status"] == "done"
    assert job["progress"]["done"] == 3 and job["progress"]["failed"] == len(files) - 3
    assets = {a["name"]: a for a in api.get(f"/api/v1/jobs/{job_id}/assets").json()["data"]}
    tops = {}
    for name, asset in assets.items():
        if name in ("red.jpg", "blue.jpg") or name.startswith("poly-"):
            assert asset["status"] == "done", asset
            tops[name] = max(asset["tags"], key=lambda t: t["score"])["tag"]
        else:
            assert asset["status"] == "failed" and asset["error_code"], asset
    assert (tops["red.jpg"], tops["blue.jpg"]) == ("shape/red square", "shape/blue circle")
    half = next(a for n, a in assets.items() if n.startswith("half-"))
    assert (half["error_code"], half["error_message"]) == (
        "truncated",
        "the image is truncated: its data ends before the picture does",
    )

    # The JPEG+ZIP polyglot is kept as what its bytes start with: served only as an image, as an attachment.
    polyglot = next(a for n, a in assets.items() if n.startswith("poly-"))
    download = api.get(f"/api/v1/assets/{polyglot['id']}/download")
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/jpeg"
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-disposition"].startswith("attachment;")

    # Only accepted bytes (and their thumbnails) are stored, all at generated keys; nothing is left staged.
    assert unexpected_store_files(api.media) == []
    assert list((api.media / "tmp").iterdir()) == []
    with session_scope() as session:
        keys = set(session.scalars(select(Asset.storage_key).where(Asset.storage_key.is_not(None))))
    assert keys == {blob_key(api.tenant.id, f["sha256"]) for f in accepted}


def test_hostile_names_are_shown_sanitized_and_never_become_a_path(api: Api) -> None:
    names = hostile_names()
    contents = [shape_jpeg("red", "square", 100 + i) for i in range(len(names))]
    etc_cron = sorted(p.name for p in Path("/etc/cron.d").iterdir()) if Path("/etc/cron.d").is_dir() else []
    job_id = api.new_job()

    answer = api.upload(job_id, [(n.raw, data) for n, data in zip(names, contents, strict=True)])

    assert answer.status_code == 201, answer.text
    shown = [f["name"] for f in answer.json()["files"]]
    assert shown == [n.shown for n in names]
    assert all(len(name) <= 200 for name in shown)
    with session_scope() as session:
        rows = list(session.scalars(select(Asset).where(Asset.job_id == uuid.UUID(job_id))))
    assert sorted(r.original_name for r in rows) == sorted(n.shown for n in names)
    for row in rows:
        assert row.storage_key is not None and STORED_KEY.fullmatch(row.storage_key), row.storage_key
        data = (api.media / row.storage_key).read_bytes()
        assert row.storage_key == blob_key(api.tenant.id, hashlib.sha256(data).hexdigest())
        detail = api.get(f"/api/v1/assets/{row.id}").json()
        assert detail["name"] == row.original_name

    assert unexpected_store_files(api.media) == []
    assert paths_named_with(MARKER) == [], "a file or folder was named after an upload"
    if etc_cron:
        assert sorted(p.name for p in Path("/etc/cron.d").iterdir()) == etc_cron


def test_names_a_multipart_header_cannot_carry_fail_the_request_with_a_reason_and_keep_nothing(api: Api) -> None:
    job_id = api.new_job()
    too_long = b"x" * (20 * 1024) + b".jpg"  # over the 16 KiB a part header line may have

    answers = {
        "carriage return": api.upload(job_id, [(b"ok.jpg", shape_jpeg("red", "square", 7)), (b"a\rb.jpg", b"x")]),
        "20 kB name": api.upload(job_id, [(b"ok.jpg", shape_jpeg("red", "square", 7)), (too_long, b"x")]),
    }

    for case, answer in answers.items():
        assert answer.status_code == 400, (case, answer.text)
        assert answer.json()["detail"]["code"] == "malformed_upload", case
        assert answer.json()["detail"]["message"].startswith("malformed multipart body: "), case
    assert api.get(f"/api/v1/jobs/{job_id}/assets").json()["data"] == []
    assert [p for p in api.media.rglob("*") if p.is_file()] == []
