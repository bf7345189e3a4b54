"""From streamed bytes to a stored, checked asset: the per-file decisions of an upload, and asset preparation."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gpu_worker.contract import MediaKind
from gpu_worker.sniff import sniff
from orchestrator.db.models import Asset, Job
from orchestrator.duplicates.hashing import thumbnail_phash
from orchestrator.enums import AssetStatus, JobStatus
from orchestrator.media_probe import ProbeError, check_image_header, probe
from orchestrator.names import sanitize_display_name
from orchestrator.storage import LocalStorage, StagedUpload, blob_key, thumbnail_key

HTTP_CREATED = 201
HTTP_CONFLICT = 409
HTTP_TOO_LARGE = 413
HTTP_UNSUPPORTED = 415
HTTP_UNPROCESSABLE = 422


@dataclass
class FileOutcome:
    """What happened to one uploaded file, as reported back to the client."""

    name: str
    status: str  # accepted | rejected | duplicate
    status_code: int
    size: int
    asset_id: uuid.UUID | None = None
    sha256: str | None = None
    media_kind: str | None = None
    code: str | None = None
    message: str | None = None
    # Not shown to clients: what to undo if the rest of the request turns out to be malformed.
    storage_key: str | None = field(default=None, repr=False)
    created_blob: bool = field(default=False, repr=False)

    def public(self) -> dict[str, object]:
        """The fields a client sees."""
        return {k: v for k, v in asdict(self).items() if k not in ("storage_key", "created_blob")}


def _reject(
    session: Session, *, job: Job, name: str, staged: StagedUpload, code: str, message: str, status_code: int
) -> FileOutcome:
    """Record a rejected file as a failed asset without bytes, so the job's summary shows it."""
    sha = None if staged.over_limit or staged.size == 0 else staged.sha256
    asset = Asset(
        tenant_id=job.tenant_id,
        job_id=job.id,
        sha256=sha,
        size_bytes=staged.size,
        original_name=name,
        status=AssetStatus.FAILED,
        error_code=code,
        error_message=message,
    )
    session.add(asset)
    session.flush()
    return FileOutcome(name, "rejected", status_code, staged.size, asset.id, sha, None, code, message)


def finish_upload(
    session: Session,
    *,
    storage: LocalStorage,
    job: Job,
    staged: StagedUpload,
    raw_name: str | None,
    max_upload_bytes: int,
    max_image_pixels: int,
) -> FileOutcome:
    """Decide the fate of one fully received file and record it. The staged temporary file is always consumed."""
    name = sanitize_display_name(raw_name)
    try:
        staged.close()
        if staged.over_limit:
            return _reject(
                session,
                job=job,
                name=name,
                staged=staged,
                code="file_too_large",
                status_code=HTTP_TOO_LARGE,
                message=f"file is {staged.size} bytes, over the limit of {max_upload_bytes} bytes",
            )
        if staged.size == 0:
            return _reject(
                session,
                job=job,
                name=name,
                staged=staged,
                code="empty_file",
                status_code=HTTP_UNPROCESSABLE,
                message="the file is empty (0 bytes)",
            )
        sniffed = sniff(staged.head)
        if sniffed is None:
            return _reject(
                session,
                job=job,
                name=name,
                staged=staged,
                code="not_media",
                status_code=HTTP_UNSUPPORTED,
                message="the file's bytes are not a supported image, video or audio format",
            )
        if sniffed.kind == MediaKind.IMAGE:
            try:
                check_image_header(staged.path, max_pixels=max_image_pixels)
            except ProbeError as exc:
                return _reject(
                    session,
                    job=job,
                    name=name,
                    staged=staged,
                    code=exc.code,
                    status_code=HTTP_UNPROCESSABLE,
                    message=exc.message,
                )
        sha = staged.sha256
        duplicate = session.scalar(
            select(Asset.id).where(Asset.job_id == job.id, Asset.sha256 == sha, Asset.storage_key.is_not(None))
        )
        if duplicate is not None:
            return FileOutcome(
                name,
                "duplicate",
                HTTP_CONFLICT,
                staged.size,
                duplicate,
                sha,
                sniffed.kind,
                "duplicate",
                "the same bytes were already uploaded to this job",
            )
        key = blob_key(job.tenant_id, sha)
        created_blob = storage.commit(staged, key)
        asset = Asset(
            tenant_id=job.tenant_id,
            job_id=job.id,
            sha256=sha,
            media_kind=sniffed.kind,
            mime_type=sniffed.mime,
            size_bytes=staged.size,
            storage_key=key,
            original_name=name,
        )
        try:
            with session.begin_nested():
                session.add(asset)
        except IntegrityError:
            # A concurrent upload of the same bytes to the same job won the race.
            if created_blob and not _blob_referenced(session, key):
                storage.delete(key)
            return FileOutcome(
                name,
                "duplicate",
                HTTP_CONFLICT,
                staged.size,
                None,
                sha,
                sniffed.kind,
                "duplicate",
                "the same bytes were already uploaded to this job",
            )
        return FileOutcome(
            name,
            "accepted",
            HTTP_CREATED,
            staged.size,
            asset.id,
            sha,
            sniffed.kind,
            storage_key=key,
            created_blob=created_blob,
        )
    finally:
        staged.discard()


def undo_uploads(session: Session, *, storage: LocalStorage, outcomes: list[FileOutcome]) -> None:
    """Remove what a request recorded before it turned out malformed: its asset rows, and the stored files that
    it created and nothing else references. The caller commits."""
    ids = [o.asset_id for o in outcomes if o.asset_id is not None and o.status != "duplicate"]
    if ids:
        session.execute(delete(Asset).where(Asset.id.in_(ids)))
        session.flush()
    for outcome in outcomes:
        if outcome.created_blob and outcome.storage_key and not _blob_referenced(session, outcome.storage_key):
            storage.delete(outcome.storage_key)


def _blob_referenced(session: Session, key: str) -> bool:
    return session.scalar(select(Asset.id).where(Asset.storage_key == key).limit(1)) is not None


def prepare_asset(session: Session, *, storage: LocalStorage, asset_id: uuid.UUID, max_image_pixels: int) -> bool:
    """Probe and thumbnail an uploaded asset. Idempotent: only an asset still in UPLOADED changes.

    Returns True when the asset is now PREPARED, False when it failed or was not in UPLOADED.
    """
    asset = session.get(Asset, asset_id)
    if asset is None or asset.status != AssetStatus.UPLOADED or asset.storage_key is None or asset.media_kind is None:
        return False
    try:
        info = probe(storage.path_for(asset.storage_key), MediaKind(asset.media_kind), max_pixels=max_image_pixels)
    except ProbeError as exc:
        asset.status = AssetStatus.FAILED
        asset.error_code, asset.error_message = exc.code, exc.message
        return False
    asset.width, asset.height, asset.duration_s = info.width, info.height, info.duration_s
    if info.thumbnail_jpeg is not None and asset.sha256:
        key = thumbnail_key(asset.tenant_id, asset.sha256)
        storage.put_bytes(key, info.thumbnail_jpeg)
        asset.thumbnail_key = key
        asset.phash = thumbnail_phash(info.thumbnail_jpeg)
    asset.status = AssetStatus.PREPARED
    return True


def job_accepts_files(job: Job) -> bool:
    """Files can be added only while the job is open."""
    return job.status == JobStatus.OPEN
