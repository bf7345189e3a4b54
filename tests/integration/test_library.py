"""The file-first library on SQLite and PostgreSQL: a tenant's library exported as folders of originals with
``.ai.json`` sidecars, wiped, and imported again is the same library (ids, names, bytes, results, tags, embeddings,
people, face assignments, gallery); exports resume and imports repeat without duplicates; a folder tagged by the real
``gpu-worker tag`` imports without any analysis; and no crafted name escapes the store or the export folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete, func, select
from typer.testing import CliRunner

from gpu_worker.contract import AnalyzerOutput, BatchResult, ItemResult, TagScore
from orchestrator.batching import claim_batch, complete_batch, finalize_job, plan_batches
from orchestrator.cli import app
from orchestrator.db.models import (
    Asset,
    Batch,
    Embedding,
    Face,
    Job,
    Person,
    Result,
    ResultTag,
    SearchDocument,
)
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, JobStatus
from orchestrator.gallery import gallery_page
from orchestrator.ingest import finish_upload, prepare_asset
from orchestrator.jobs import create_job, seal_job
from orchestrator.library.export import MANIFEST_NAME, export_library
from orchestrator.library.importer import ImportOptions, ImportSummary, import_library
from orchestrator.settings import get_settings
from orchestrator.storage import LocalStorage
from tests.fixtures.factories import jpeg_bytes, make_tenant, png_bytes, truncated_jpeg
from tests.fixtures.services import OrchestratorEnv

pytestmark = pytest.mark.integration

ANALYZERS = ["clip", "objects", "faces", "transcribe"]
TAG_VOCABULARY = {"clip": {"vocabulary": {"people": ["one person", "two people", "a crowd"]}, "threshold": 0.0}}
RUN_TIMEOUT_S = 180


def storage() -> LocalStorage:
    return LocalStorage(get_settings().media_dir)


def options(*, only_sidecars: bool = False) -> ImportOptions:
    settings = get_settings()
    return ImportOptions(
        max_upload_bytes=settings.max_upload_bytes,
        max_image_pixels=settings.max_image_pixels,
        analyzers=["clip"],
        only_sidecars=only_sidecars,
    )


def unit_vector(seed: int, dim: int) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return [float(v) for v in vector / np.linalg.norm(vector)]


def faces_payload(count: int, seed: int, *, video: bool = False) -> dict[str, Any]:
    faces = []
    for index in range(count):
        face: dict[str, Any] = {
            "box": [0.1 * index, 0.1, 0.1 * index + 0.2, 0.4],
            "landmarks": [[0.2, 0.2]] * 5,
            "probability": 0.99 - index / 100,
            "size_px": 80.0,
            "embedding": unit_vector(seed + index, 512),
        }
        if video:
            face.update({"timestamp_s": 0.5 * index, "frame": index})
        faces.append(face)
    return {"face_count": count, "faces": faces, "image_width": 640, "image_height": 480}


def outputs_for(name: str, seed: int) -> dict[str, AnalyzerOutput]:
    """What the analyzers would have said about each file of the library."""
    clip = AnalyzerOutput(
        model_id="clip-test",
        tags=[TagScore(tag=f"scene/{name.split('.')[0]}", score=0.8), TagScore(tag="scene/outdoor", score=0.4)],
        embedding=unit_vector(seed, 64),
        payload={"nsfw_score": 0.02 * seed},
    )
    objects = AnalyzerOutput(
        model_id="yolo-test",
        tags=[TagScore(tag="object/person", score=0.9)],
        payload={"counts": {"person": 2}, "person_count": 2, "detections": [{"label": "person", "score": 0.9}]},
    )
    if name == "speech_en.wav":
        return {
            "transcribe": AnalyzerOutput(
                model_id="whisper-test",
                tags=[TagScore(tag="language/en", score=0.97)],
                payload={"text": "hello world", "segments": [{"start": 0.0, "end": 1.2, "text": "hello world"}]},
            )
        }
    if name == "zidane.jpg":
        faces = AnalyzerOutput(model_id="facenet-test", payload=faces_payload(2, 100))
        return {"clip": clip, "objects": objects, "faces": faces}
    if name == "grace_hopper.jpg":
        return {"clip": clip, "faces": AnalyzerOutput(model_id="facenet-test", payload=faces_payload(1, 200))}
    if name == "talking_zidane_bus.mp4":
        return {
            "clip": clip,
            "faces": AnalyzerOutput(model_id="facenet-test", payload=faces_payload(2, 300, video=True)),
        }
    return {"clip": clip, "objects": objects}


def upload(session: Any, job: Job, name: str, data: bytes) -> uuid.UUID:
    settings = get_settings()
    staged = storage().stage(settings.max_upload_bytes)
    staged.write(data)
    outcome = finish_upload(
        session,
        storage=storage(),
        job=job,
        staged=staged,
        raw_name=name,
        max_upload_bytes=settings.max_upload_bytes,
        max_image_pixels=settings.max_image_pixels,
    )
    assert outcome.asset_id is not None, outcome
    return outcome.asset_id


def build_library(tenant_id: uuid.UUID, media: Path) -> None:
    """Two jobs analysed through the real batch path, a file that failed to decode, a file that was not media, a
    name given twice, and people: one named, one not, one face nobody claimed."""
    files = {
        "bus.jpg": (media / "bus.jpg").read_bytes(),
        "zidane.jpg": (media / "zidane.jpg").read_bytes(),
        "grace_hopper.jpg": (media / "grace_hopper.jpg").read_bytes(),
        "speech_en.wav": (media / "speech_en.wav").read_bytes(),
        "talking_zidane_bus.mp4": (media / "talking_zidane_bus.mp4").read_bytes(),
        "Bus.JPG": png_bytes(),
        "broken.jpg": truncated_jpeg(),
        "notes.txt": b"not a picture at all",
    }
    settings = get_settings()
    with session_scope() as session:
        first = create_job(
            session, tenant_id=tenant_id, name="Holiday 2026", analyzers=ANALYZERS, default_analyzers=["clip"]
        )
        second = create_job(session, tenant_id=tenant_id, name="", analyzers=["clip"], default_analyzers=["clip"])
        first.options = {"clip": {"threshold": 0.1}}
        ids = {name: upload(session, first, name, data) for name, data in files.items()}
        ids["red.jpg"] = upload(session, second, "red.jpg", jpeg_bytes())
        for job in (first, second):
            seal_job(session, tenant_id=tenant_id, job_id=job.id)
    with session_scope() as session:
        for asset_id in ids.values():
            prepare_asset(session, storage=storage(), asset_id=asset_id, max_image_pixels=settings.max_image_pixels)
    for job_id in (first.id, second.id):
        with session_scope() as session:
            batch_ids = plan_batches(session, job_id=job_id, batch_size=50, max_attempts=3)
        assert batch_ids
        for batch_id in batch_ids:
            with session_scope() as session:
                claim = claim_batch(session, batch_id=batch_id, worker_id="test", lease_s=60)
                assert claim is not None
                assets = session.scalars(select(Asset).where(Asset.batch_id == batch_id)).all()
                by_id = {str(a.id): a.original_name for a in assets}
                items = [
                    ItemResult(asset_id=asset_id, outputs=outputs_for(name, seed))
                    for seed, (asset_id, name) in enumerate(sorted(by_id.items()), start=1)
                ]
                complete_batch(
                    session, claim=claim, result=BatchResult(batch_id=str(batch_id), items=items), backend="t"
                )
        with session_scope() as session:
            assert finalize_job(session, job_id=job_id)
    with session_scope() as session:
        ada = Person(tenant_id=tenant_id, name="Ada Lovelace")
        unnamed = Person(tenant_id=tenant_id)
        session.add_all([ada, unnamed])
        session.flush()
        for result in session.scalars(select(Result).where(Result.tenant_id == tenant_id, Result.analyzer == "faces")):
            for index in range(len(result.payload["faces"])):
                assign(session, result.asset_id, index, None, None)
        assign(session, ids["grace_hopper.jpg"], 0, ada, "user")
        assign(session, ids["zidane.jpg"], 0, unnamed, "auto")
        assign(session, ids["talking_zidane_bus.mp4"], 1, unnamed, "auto")


def assign(session: Any, asset_id: uuid.UUID, index: int, person: Person | None, by: str | None) -> None:
    """Put one face of the faces result in the faces table (unless indexing did already) and assign it."""
    face = session.scalar(select(Face).where(Face.asset_id == asset_id, Face.face_index == index))
    if face is None:
        result = session.scalar(select(Result).where(Result.asset_id == asset_id, Result.analyzer == "faces"))
        record = result.payload["faces"][index]
        face = Face(
            tenant_id=result.tenant_id,
            asset_id=asset_id,
            face_index=index,
            timestamp_s=record.get("timestamp_s"),
            box=record["box"],
            probability=record["probability"],
            embedding=np.asarray(record["embedding"], dtype="<f4").tobytes(),
        )
        session.add(face)
    face.person_id, face.assigned_by = (person.id if person else None), by
    if person is not None:
        person.face_count += 1


def snapshot(tenant_id: uuid.UUID) -> dict[str, Any]:
    """Everything a user sees of the library, in a comparable form."""
    with session_scope() as session:
        people = {p.id: p for p in session.scalars(select(Person).where(Person.tenant_id == tenant_id))}
        root = storage()
        return {
            "jobs": sorted(
                (str(j.id), j.name, j.created_at, j.analyzers, j.options, str(j.status))
                for j in session.scalars(select(Job).where(Job.tenant_id == tenant_id))
            ),
            "assets": sorted(
                (
                    str(a.id),
                    str(a.job_id),
                    a.original_name,
                    a.sha256,
                    str(a.status),
                    a.error_code,
                    a.error_message,
                    a.media_kind,
                    a.mime_type,
                    a.size_bytes,
                    a.width,
                    a.height,
                    a.duration_s,
                    a.created_at,
                    a.thumbnail_key is not None and root.exists(a.thumbnail_key),
                    a.storage_key is not None and _stored_sha256(root, a.storage_key) == a.sha256,
                    a.phash,
                )
                for a in session.scalars(select(Asset).where(Asset.tenant_id == tenant_id))
            ),
            "results": sorted(
                (str(r.asset_id), r.analyzer, r.model_id, json.dumps(r.payload, sort_keys=True))
                for r in session.scalars(select(Result).where(Result.tenant_id == tenant_id))
            ),
            "tags": sorted(
                (str(t.asset_id), t.analyzer, t.tag, t.score)
                for t in session.scalars(select(ResultTag).where(ResultTag.tenant_id == tenant_id))
            ),
            "embeddings": sorted(
                (str(e.asset_id), e.analyzer, e.model_id, e.dim, e.vector)
                for e in session.scalars(select(Embedding).where(Embedding.tenant_id == tenant_id))
            ),
            "faces": sorted(
                (
                    str(f.asset_id),
                    f.face_index,
                    f.box,
                    f.probability,
                    f.timestamp_s,
                    f.embedding,
                    str(f.person_id) if f.person_id else None,
                    people[f.person_id].name if f.person_id else None,
                    f.assigned_by,
                )
                for f in session.scalars(select(Face).where(Face.tenant_id == tenant_id))
            ),
            "people": sorted((str(p.id), p.name or "") for p in people.values()),
            "gallery": gallery_page(session, tenant_id=tenant_id, limit=200),
        }


def _stored_sha256(root: LocalStorage, key: str) -> str:
    return hashlib.sha256(root.path_for(key).read_bytes()).hexdigest()


def wipe(tenant_id: uuid.UUID) -> None:
    """Forget the tenant's library: every row below the tenant, and its files in the media store."""
    with session_scope() as session:
        for model in (Face, Person, Embedding, ResultTag, Result, SearchDocument, Asset, Batch, Job):
            session.execute(delete(model).where(model.tenant_id == tenant_id))  # type: ignore[attr-defined]
    shutil.rmtree(get_settings().media_dir / "tenants" / tenant_id.hex, ignore_errors=True)


def run_import(tenant_id: uuid.UUID, source: Path, **kwargs: Any) -> ImportSummary:
    with session_scope() as session:
        return import_library(
            session, storage(), tenant_id=tenant_id, source=source, options=options(**kwargs), on_progress=None
        )


def test_an_exported_library_wiped_and_imported_is_the_same_library(
    orch_env: OrchestratorEnv, shared_media: Path, tmp_path: Path
) -> None:
    tenant = make_tenant()
    build_library(tenant.id, shared_media)
    before = snapshot(tenant.id)
    dest = tmp_path / "export"

    with session_scope() as session:
        exported = export_library(session, storage(), tenant_id=tenant.id, dest=dest)

    assert (exported.jobs, exported.assets, exported.problems) == (2, 9, [])
    assert exported.originals_written == 8  # every file but the one that was not media
    manifest = json.loads((dest / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["tenant"] == tenant.name and manifest["counts"]["assets"] == 9
    holiday = next(dest.glob("Holiday 2026-*"))
    names = sorted(p.name for p in holiday.iterdir())
    assert "bus.jpg" in names and "Bus (2).JPG" in names and "notes.txt" not in names
    assert "notes.txt.ai.json" in names and "broken.jpg" in names
    grace = json.loads((holiday / "grace_hopper.jpg.ai.json").read_text(encoding="utf-8"))
    assert grace["schema_version"] == 2 and grace["library"]["people"][0]["person_name"] == "Ada Lovelace"
    assert (holiday / "zidane.jpg").read_bytes() == (shared_media / "zidane.jpg").read_bytes()

    wipe(tenant.id)
    assert snapshot(tenant.id)["assets"] == []
    first = run_import(tenant.id, dest)

    assert (first.restored, first.uploaded, first.problems) == (9, 0, [])
    assert (first.jobs_created, first.people_created) == (2, 2)
    assert snapshot(tenant.id) == before

    again = run_import(tenant.id, dest)

    assert (again.restored, again.unchanged, again.jobs_created, again.problems) == (0, 9, 0, [])
    assert snapshot(tenant.id) == before


def test_an_export_resumes_and_only_rewrites_what_is_missing_or_stale(
    orch_env: OrchestratorEnv, shared_media: Path, tmp_path: Path
) -> None:
    tenant = make_tenant()
    build_library(tenant.id, shared_media)
    dest = tmp_path / "export"
    with session_scope() as session:
        export_library(session, storage(), tenant_id=tenant.id, dest=dest)
    holiday = next(dest.glob("Holiday 2026-*"))
    (holiday / "bus.jpg").unlink()
    (holiday / "zidane.jpg.ai.json").unlink()
    (holiday / "grace_hopper.jpg").write_bytes(b"cut")
    progress: list[tuple[int, int, str]] = []

    with session_scope() as session:
        resumed = export_library(
            session, storage(), tenant_id=tenant.id, dest=dest, on_progress=lambda *a: progress.append(a)
        )

    assert (resumed.originals_written, resumed.sidecars_written, resumed.unchanged) == (2, 1, 6)
    assert (holiday / "bus.jpg").read_bytes() == (shared_media / "bus.jpg").read_bytes()
    assert (holiday / "grace_hopper.jpg").read_bytes() == (shared_media / "grace_hopper.jpg").read_bytes()
    assert progress[-1][:2] == (9, 9)
    assert not [p for p in dest.rglob(".*")], "no temporary file is left behind"


def test_the_same_export_imported_by_another_tenant_gets_new_ids_and_changes_nothing_of_the_first(
    orch_env: OrchestratorEnv, shared_media: Path, tmp_path: Path
) -> None:
    owner, other = make_tenant(), make_tenant()
    build_library(owner.id, shared_media)
    before = snapshot(owner.id)
    with session_scope() as session:
        export_library(session, storage(), tenant_id=owner.id, dest=tmp_path / "export")

    imported = run_import(other.id, tmp_path / "export")
    twice = run_import(other.id, tmp_path / "export")

    assert (imported.restored, imported.problems) == (9, [])
    assert (twice.restored, twice.unchanged) == (0, 9)
    assert snapshot(owner.id) == before
    theirs = snapshot(other.id)
    assert not {a[0] for a in theirs["assets"]} & {a[0] for a in before["assets"]}
    assert sorted(a[2:13] for a in theirs["assets"]) == sorted(a[2:13] for a in before["assets"])
    assert sorted(name for _, name in theirs["people"]) == sorted(name for _, name in before["people"])


@pytest.fixture
def tag_env(tiny_clip_worker_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **tiny_clip_worker_env, "GPUW_DEVICE": "cpu", "GPUW_NSFW_MODEL": ""}


def gpu_worker(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("gpu-worker")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "gpu_worker.cli", *args]


def test_a_folder_tagged_by_gpu_worker_imports_with_its_tags_and_embeddings_and_no_analysis(
    orch_env: OrchestratorEnv, shared_media: Path, tmp_path: Path, tag_env: dict[str, str]
) -> None:
    folder = tmp_path / "Tagged Photos"
    (folder / "sub").mkdir(parents=True)
    for name in ("bus.jpg", "zidane.jpg"):
        shutil.copyfile(shared_media / name, folder / name)
    shutil.copyfile(shared_media / "grace_hopper.jpg", folder / "sub" / "grace_hopper.jpg")
    done = subprocess.run(
        gpu_worker("tag", str(folder), "--write", "none", "--options", json.dumps(TAG_VOCABULARY)),
        env=tag_env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sidecars = {p.name[: -len(".ai.json")]: json.loads(p.read_text()) for p in folder.rglob("*.ai.json")}
    assert len(sidecars) == 3 and all(s["schema_version"] == 2 for s in sidecars.values())
    tenant = make_tenant()

    first = run_import(tenant.id, folder)
    again = run_import(tenant.id, folder)

    assert (first.restored, first.uploaded, first.jobs_created, first.problems) == (3, 0, 1, [])
    assert (again.restored, again.unchanged, again.jobs_created) == (0, 3, 0)
    with session_scope() as session:
        (job,) = session.scalars(select(Job).where(Job.tenant_id == tenant.id)).all()
        assert (job.name, job.status, job.analyzers) == ("Tagged Photos", JobStatus.DONE, ["clip"])
        assert session.scalar(select(func.count()).select_from(Batch).where(Batch.tenant_id == tenant.id)) == 0
        assets = {a.original_name: a for a in session.scalars(select(Asset).where(Asset.tenant_id == tenant.id))}
        assert sorted(assets) == ["bus.jpg", "grace_hopper.jpg", "zidane.jpg"]
        for name, asset in assets.items():
            sidecar = sidecars[name]
            clip = sidecar["analyzers"]["clip"]
            assert asset.status == AssetStatus.DONE and asset.thumbnail_key is not None
            assert asset.sha256 == sidecar["file"]["sha256"] and asset.width is not None
            tags = session.scalars(select(ResultTag).where(ResultTag.asset_id == asset.id)).all()
            assert sorted((t.tag, t.score) for t in tags) == sorted((t["tag"], t["score"]) for t in clip["tags"])
            embedding = session.scalar(select(Embedding).where(Embedding.asset_id == asset.id))
            assert embedding is not None
            assert embedding.vector == np.asarray(clip["embedding"], dtype="<f4").tobytes()
            result = session.scalar(select(Result).where(Result.asset_id == asset.id))
            assert result is not None and result.payload == clip["payload"]


def write_sidecar(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document), encoding="utf-8")


def crafted(name: str, *, asset_id: str, job_id: str, job_name: str) -> dict[str, Any]:
    return {
        "schema": "ai-media-analysis/sidecar",
        "schema_version": 2,
        "file": {"name": name},
        "analyzers": {
            "clip": {"model_id": "m\x00", "tags": [{"tag": "scene/x\x00y", "score": 0.5}]},
            "faces": {"model_id": "f", "payload": {"faces": [{"box": [0.1, 0.1, 0.2, 0.2], "probability": 0.9}]}},
        },
        "library": {
            "asset_id": asset_id,
            "job": {"id": job_id, "name": job_name},
            "status": "done",
            "error_message": "\x00",
            "people": [{"face_index": 0, "person_name": "../../Mallory\x00"}],
        },
    }


def test_crafted_names_and_links_never_leave_the_store_or_the_export_folder(
    orch_env: OrchestratorEnv, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(jpeg_bytes(color=(1, 2, 3)))
    source = tmp_path / "incoming"
    source.mkdir()
    (source / "a.jpg").write_bytes(jpeg_bytes(color=(10, 20, 30)))
    write_sidecar(
        source / "a.jpg.ai.json", crafted("../../x.jpg", asset_id="../../etc", job_id="../..", job_name="../../../evil")
    )
    (source / "b.jpg").write_bytes(jpeg_bytes(color=(40, 50, 60)))
    write_sidecar(
        source / "b.jpg.ai.json", crafted("/etc/passwd", asset_id=str(uuid.uuid4()), job_id="/", job_name="/abs")
    )
    (source / "c.jpg").write_bytes(jpeg_bytes(color=(70, 80, 90)))
    write_sidecar(
        source / "c.jpg.ai.json",
        crafted("nul\x00l.jpg\n", asset_id=str(uuid.uuid4()), job_id=str(uuid.uuid4()), job_name="\x00"),
    )
    (source / "linked.jpg").symlink_to(outside / "secret.jpg")
    write_sidecar(source / "linked.jpg.ai.json", crafted("linked.jpg", asset_id="", job_id="", job_name="links"))
    (source / "linked-dir").symlink_to(outside, target_is_directory=True)
    tenant = make_tenant()

    summary = run_import(tenant.id, source)

    assert (summary.restored, summary.problems) == (3, [])
    media_root = get_settings().media_dir.resolve()
    with session_scope() as session:
        assets = session.scalars(select(Asset).where(Asset.tenant_id == tenant.id)).all()
        assert sorted(a.original_name for a in assets) == ["null.jpg", "passwd", "x.jpg"]
        for asset in assets:
            assert media_root in storage().path_for(asset.storage_key or "").resolve().parents
        assert session.scalars(select(Person.name).where(Person.tenant_id == tenant.id)).all() == ["../../Mallory"]
        tags = session.scalars(select(ResultTag.tag).where(ResultTag.tenant_id == tenant.id)).all()
        assert tags == ["scene/xy"] * 3
    before_outside = sorted(p.name for p in tmp_path.iterdir())
    dest = tmp_path / "export"

    with session_scope() as session:
        exported = export_library(session, storage(), tenant_id=tenant.id, dest=dest)

    assert exported.problems == []
    written = [p for p in dest.rglob("*") if p.is_file()]
    assert all(dest.resolve() in p.resolve().parents for p in written)
    assert set(p.name for p in tmp_path.iterdir()) - set(before_outside) == {"export"}
    assert [p.name for p in outside.iterdir()] == ["secret.jpg"]
    assert sorted(p.name for p in written if not p.name.endswith(".ai.json")) == sorted(
        [MANIFEST_NAME, "null.jpg", "passwd", "x.jpg"]
    )
    folders = {p.parent for p in written if p.parent != dest}
    assert {f.parent for f in folders} == {dest}
    assert sorted(f.name.rsplit("-", 1)[0] for f in folders) == sorted(
        ["abs", "evil", datetime.now(UTC).date().isoformat()]
    )


def test_malformed_sidecars_are_reported_and_files_without_one_are_uploaded_for_analysis(
    orch_env: OrchestratorEnv, tmp_path: Path
) -> None:
    source = tmp_path / "mixed"
    source.mkdir()
    (source / "good.jpg").write_bytes(jpeg_bytes(color=(1, 1, 1)))
    write_sidecar(source / "good.jpg.ai.json", {"schema_version": 1, "file": "good.jpg", "analyzers": {}})
    (source / "future.jpg").write_bytes(jpeg_bytes(color=(2, 2, 2)))
    write_sidecar(source / "future.jpg.ai.json", {"schema_version": 9, "file": {"name": "future.jpg"}})
    (source / "garbled.jpg").write_bytes(jpeg_bytes(color=(3, 3, 3)))
    (source / "garbled.jpg.ai.json").write_text("{oops", encoding="utf-8")
    (source / "new.png").write_bytes(png_bytes())
    (source / "readme.txt").write_text("not media", encoding="utf-8")
    (source / ".hidden.jpg").write_bytes(jpeg_bytes(color=(4, 4, 4)))
    tenant = make_tenant()

    sidecars_only = run_import(tenant.id, source, only_sidecars=True)
    full = run_import(tenant.id, source)

    reasons = {p.path: p.reason for p in full.problems}
    assert set(reasons) == {"future.jpg.ai.json", "garbled.jpg.ai.json"}
    assert "newer than this program reads" in reasons["future.jpg.ai.json"]
    assert "not valid JSON" in reasons["garbled.jpg.ai.json"]
    assert (sidecars_only.restored, sidecars_only.uploaded, sidecars_only.skipped) == (1, 0, 2)
    assert (full.restored, full.uploaded, full.unchanged, full.skipped) == (0, 1, 1, 1)
    with session_scope() as session:
        new = session.scalar(select(Asset).where(Asset.tenant_id == tenant.id, Asset.original_name == "new.png"))
        assert new is not None and new.status == AssetStatus.UPLOADED and new.id in full.queued_assets
        job = session.get(Job, new.job_id)
        assert job is not None and job.status == JobStatus.QUEUED and job.id in full.queued_jobs
        good = session.scalar(select(Asset).where(Asset.tenant_id == tenant.id, Asset.original_name == "good.jpg"))
        assert good is not None and good.status == AssetStatus.FAILED and good.error_code == "no_result"
        assert session.scalar(select(func.count()).select_from(Asset).where(Asset.tenant_id == tenant.id)) == 2


def test_the_command_line_exports_and_imports_with_a_summary(orch_env: OrchestratorEnv, tmp_path: Path) -> None:
    tenant = make_tenant()
    source = tmp_path / "photos"
    source.mkdir()
    (source / "one.jpg").write_bytes(jpeg_bytes(color=(9, 9, 9)))
    runner = CliRunner()

    imported = runner.invoke(app, ["library", "import", str(source), "--tenant", tenant.name])
    exported = runner.invoke(app, ["library", "export", str(tmp_path / "out"), "--tenant", tenant.name])
    unknown = runner.invoke(app, ["library", "export", str(tmp_path / "out"), "--tenant", "nobody"])

    assert imported.exit_code == 0, imported.output
    assert "1 new files to analyse" in imported.output and "0 problems" in imported.output
    assert exported.exit_code == 0, exported.output
    assert "exported 1 files of 1 jobs" in exported.output
    assert unknown.exit_code == 1 and "no tenant called 'nobody'" in unknown.output
    assert (tmp_path / "out" / MANIFEST_NAME).is_file()
