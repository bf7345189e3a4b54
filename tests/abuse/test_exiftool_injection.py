"""Metadata values built to inject exiftool options, written for real with the installed exiftool through both
writers: the orchestrator's write-back (values travel in a ``-json=`` import file) and the worker's folder tagging
(values follow ``-TAG+=`` on their own argument line). Each value is stored literally or refused with a reason; the
file's other metadata, the stored original, a secret file and the rest of the filesystem are untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gpu_worker.contract import MediaKind
from gpu_worker.tagging.checkpoint import Checkpoint
from gpu_worker.tagging.exiftool import ExifTool, find_exiftool
from gpu_worker.tagging.keywords import TagMode, XmpField, keywords_for
from gpu_worker.tagging.layout import WriteTarget
from gpu_worker.tagging.walk import MediaFile, hash_file
from gpu_worker.tagging.xmp import XmpWriter
from orchestrator.api.main import create_app
from orchestrator.db.models import Asset, Face, Job, Person, ResultTag
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, JobStatus
from orchestrator.settings import get_settings
from orchestrator.storage import LocalStorage, blob_key
from orchestrator.tasks.writeback import run_writeback
from tests.abuse.corpus import MARKER, exiftool_injections
from tests.abuse.filesystem import paths_named_with, unexpected_store_files
from tests.fixtures.factories import jpeg_bytes, make_tenant
from tests.fixtures.services import OrchestratorEnv

pytestmark = pytest.mark.integration

# What a user's photo already says about itself; no write may change it.
USER_METADATA = [
    "-EXIF:Artist=Ann Example",
    "-EXIF:Copyright=(c) Ann",
    "-EXIF:ImageDescription=harbour at dawn",
    "-XMP-dc:Creator=Ann Example",
    "-XMP-dc:Subject=holiday",
    "-XMP-digiKam:TagsList=Places/Harbour",
]
# Tags that a write may change: ours, exiftool's own bookkeeping, and the file system's.
CHANGING_GROUPS = ("System", "File", "Composite", "XMP-x", "XMP-mwg-rs", "XMP-MP", "ExifTool")
CHANGING_TAGS = {f"XMP-{f}" for f in ("dc:Subject", "digiKam:TagsList", "lr:HierarchicalSubject")}


@pytest.fixture(scope="module")
def exiftool_path() -> Path:
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed (Debian: apt-get install libimage-exiftool-perl)")
    return find_exiftool()


@pytest.fixture
def secret(tmp_path: Path) -> Iterator[tuple[Path, bytes]]:
    """A file the injections name, with content that must never end up in a written file."""
    path = tmp_path / "secret.txt"
    content = f"SECRET-{uuid.uuid4().hex}".encode()
    path.write_bytes(content)
    yield path, content
    assert path.read_bytes() == content


def users_photo(exiftool_path: Path, folder: Path) -> bytes:
    """A 256 x 256 JPEG carrying a user's EXIF and XMP."""
    path = folder / f"seed-{uuid.uuid4().hex}.jpg"
    path.write_bytes(jpeg_bytes(256, 256))
    subprocess.run(
        [str(exiftool_path), "-overwrite_original", *USER_METADATA, str(path)], check=True, capture_output=True
    )
    return path.read_bytes()


def metadata(exiftool_path: Path, data: bytes, folder: Path) -> dict[str, Any]:
    """Every tag exiftool reads, by group:name, structures kept."""
    path = folder / f"read-{uuid.uuid4().hex}.jpg"
    path.write_bytes(data)
    out = subprocess.run(
        [str(exiftool_path), "-j", "-a", "-G1", "-struct", str(path)], check=True, capture_output=True
    ).stdout
    path.unlink()
    document: dict[str, Any] = json.loads(out)[0]
    return document


def unchanged_part(document: dict[str, Any]) -> dict[str, Any]:
    """The tags no write of ours may alter."""
    return {
        k: v
        for k, v in document.items()
        if k.split(":")[0] not in CHANGING_GROUPS and k not in CHANGING_TAGS and k != "SourceFile"
    }


def as_list(value: Any) -> list[str]:
    return [str(v) for v in (value if isinstance(value, list) else [value] if value is not None else [])]


def store_analysed_photo(storage: LocalStorage, data: bytes, values: list[str]) -> tuple[Any, uuid.UUID, str]:
    """A tenant with a finished job of one stored photo whose tags and people are named ``values``."""
    tenant = make_tenant()
    digest = hashlib.sha256(data).hexdigest()
    key = blob_key(tenant.id, digest)
    storage.put_bytes(key, data)
    with session_scope() as session:
        job = Job(tenant_id=tenant.id, name="harbour", status=JobStatus.DONE, analyzers=["clip", "faces"])
        session.add(job)
        session.flush()
        asset = Asset(
            tenant_id=tenant.id,
            job_id=job.id,
            sha256=digest,
            media_kind="image",
            mime_type="image/jpeg",
            size_bytes=len(data),
            storage_key=key,
            original_name="harbour.jpg",
            status=AssetStatus.DONE,
            width=256,
            height=256,
        )
        session.add(asset)
        session.flush()
        session.add(ResultTag(tenant_id=tenant.id, asset_id=asset.id, analyzer="clip", tag="scene/harbour", score=0.9))
        for index, value in enumerate(values):
            session.add(
                ResultTag(tenant_id=tenant.id, asset_id=asset.id, analyzer="clip", tag=f"odd/{value}", score=0.8)
            )
            person = Person(tenant_id=tenant.id, name=value, face_count=1)
            session.add(person)
            session.flush()
            box = [float(index * 16), 1.0, float(index * 16 + 12), 13.0]
            session.add(
                Face(
                    tenant_id=tenant.id,
                    asset_id=asset.id,
                    face_index=index,
                    box=box,
                    probability=0.99,
                    person_id=person.id,
                    assigned_by="user",
                )
            )
        return tenant, asset.id, key


@pytest.mark.parametrize("orch_env", ["sqlite"], indirect=True)  # the database plays no part in what exiftool gets
def test_write_back_stores_injection_values_literally_or_refuses_them_and_touches_nothing_else(
    orch_env: OrchestratorEnv, exiftool_path: Path, secret: tuple[Path, bytes], tmp_path: Path
) -> None:
    secret_path, secret_content = secret
    values = exiftool_injections(secret_path)
    storage = LocalStorage(orch_env.data_dir / "media")
    original = users_photo(exiftool_path, tmp_path)
    before = metadata(exiftool_path, original, tmp_path)
    tenant, asset_id, original_key = store_analysed_photo(storage, original, values)
    get_settings.cache_clear()
    client = TestClient(create_app())

    started = client.post("/api/v1/writeback", json={"asset_ids": [str(asset_id)]}, headers=tenant.headers)
    assert started.status_code == 202, started.text
    run_writeback(started.json()["id"])
    write = client.get(f"/api/v1/writeback/{started.json()['id']}", headers=tenant.headers).json()
    written = client.get(f"/api/v1/assets/{asset_id}/original", headers=tenant.headers).content

    (item,) = write["items"]
    assert item["status"] == "written", item
    after = metadata(exiftool_path, written, tmp_path)
    refused = {r["tag"]: r["reason"] for r in item["written"]["rejected"]}
    tags_list = set(as_list(after.get("XMP-digiKam:TagsList")))
    region_names = {r.get("Name") for r in after["XMP-mwg-rs:RegionInfo"]["RegionList"]}
    outcome = {}
    for value in values:
        as_tag = "literal" if f"AI/Odd/{value}" in tags_list else refused.get(f"odd/{value}")
        as_name = "literal" if value in region_names else refused.get(value)
        assert as_tag and as_name, f"{value!r} was neither written literally nor refused with a reason"
        outcome[value] = (as_tag, as_name)
    print(json.dumps(outcome, indent=1))
    assert unchanged_part(after) == unchanged_part(before)
    assert "holiday" in as_list(after["XMP-dc:Subject"]) and "Places/Harbour" in tags_list
    assert secret_content not in written and b"root:x:0:0" not in written
    assert storage.path_for(original_key).read_bytes() == original
    assert unexpected_store_files(storage.root) == [] and list((storage.root / "tmp").iterdir()) == []
    assert paths_named_with(MARKER) == []


def test_folder_tagging_stores_injection_labels_literally_or_refuses_them_and_touches_nothing_else(
    exiftool_path: Path, secret: tuple[Path, bytes], tmp_path: Path
) -> None:
    secret_path, secret_content = secret
    values = exiftool_injections(secret_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = folder / "harbour.jpg"
    photo.write_bytes(users_photo(exiftool_path, tmp_path))
    before = metadata(exiftool_path, photo.read_bytes(), tmp_path)
    keywords, refused = keywords_for(["scene/harbour", *(f"odd/{v}" for v in values)])

    with ExifTool(exiftool_path) as exiftool, Checkpoint(folder) as checkpoint:
        writer = XmpWriter(exiftool, checkpoint, mode=TagMode.REPLACE)
        media = MediaFile(photo, photo.name, MediaKind.IMAGE, "image/jpeg")
        writer.write(
            media, keywords, target=WriteTarget.XMP, expected_sha256=hash_file(photo), before_replace=lambda _: None
        )
        read = exiftool.read_keywords(photo)

    reasons = {r.tag: r.reason for r in refused}
    for value in values:
        literal = f"AI/Odd/{value}" in read[XmpField.TAGS_LIST]
        assert literal or reasons.get(f"odd/{value}"), f"{value!r} was neither written literally nor refused"
        assert not (literal and f"odd/{value}" in reasons)
    assert read[XmpField.TAGS_LIST] == ["Places/Harbour", *keywords[XmpField.TAGS_LIST]]
    after = metadata(exiftool_path, photo.read_bytes(), tmp_path)
    assert unchanged_part(after) == unchanged_part(before)
    assert secret_content not in photo.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == [".ai-media-analysis", "harbour.jpg"]
    assert paths_named_with(MARKER) == []
