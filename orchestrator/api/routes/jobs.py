"""Jobs: create, upload files, seal, status, list, and the job's assets with results."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from orchestrator.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from orchestrator.api.presenters import assets_public, job_public
from orchestrator.api.schemas import AssetsPublic, JobCreate, JobPublic, JobsPublic, UploadedFilePublic, UploadPublic
from orchestrator.api.uploads import MalformedUploadError, ReceivedFile, receive_files
from orchestrator.enums import AssetStatus
from orchestrator.errors import ConflictError
from orchestrator.ingest import FileOutcome, finish_upload, job_accepts_files, undo_uploads
from orchestrator.jobs import create_job, get_job, list_assets, list_jobs, seal_job
from orchestrator.tasks.app import enqueue
from orchestrator.tasks.constants import TASK_PLAN_JOB, TASK_PREPARE_ASSET

router = APIRouter(prefix="/jobs", tags=["jobs"])

Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]


@router.post("", status_code=status.HTTP_201_CREATED)
def post_job(body: JobCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> JobPublic:
    """Open a job; then upload files to it and seal it."""
    job = create_job(
        session,
        tenant_id=tenant.id,
        name=body.name,
        analyzers=body.analyzers,
        options=body.options,
        default_analyzers=settings.default_analyzers,
    )
    session.commit()
    return job_public(session, job)


@router.get("")
def get_jobs(session: SessionDep, tenant: TenantDep, limit: Limit = 50, offset: Offset = 0) -> JobsPublic:
    """The tenant's jobs, newest first."""
    jobs, count = list_jobs(session, tenant_id=tenant.id, limit=limit, offset=offset)
    return JobsPublic(data=[job_public(session, j) for j in jobs], count=count)


@router.get("/{job_id}")
def get_job_status(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """A job's status, progress counts and notices."""
    return job_public(session, get_job(session, tenant_id=tenant.id, job_id=job_id))


@router.post(
    "/{job_id}/files",
    status_code=status.HTTP_201_CREATED,
    responses={207: {"model": UploadPublic}, 413: {"model": UploadPublic}, 415: {"model": UploadPublic}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    }
                }
            },
        }
    },
)
async def post_files(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> JSONResponse:
    """Stream one or many files (multipart parts named ``files``) into an open job.

    Every file is judged alone: the answer lists each with its status code (201 accepted, 409 duplicate, 413 too
    large, 415 not media, 422 unreadable). The response is 201 when all were accepted, the shared code when all were
    rejected alike, and 207 otherwise.
    """
    job = get_job(session, tenant_id=tenant.id, job_id=job_id)
    if not job_accepts_files(job):
        raise ConflictError("the job is sealed; create a new job for more files", code="job_sealed")
    outcomes: list[FileOutcome] = []

    def on_file(received: ReceivedFile) -> None:
        outcome = finish_upload(
            session,
            storage=storage,
            job=job,
            staged=received.staged,
            raw_name=received.raw_name,
            max_upload_bytes=settings.max_upload_bytes,
            max_image_pixels=settings.max_image_pixels,
        )
        # Committed file by file so that a long upload never holds the database's write lock (SQLite) for long.
        session.commit()
        outcomes.append(outcome)

    try:
        count = await receive_files(request, storage=storage, limit_bytes=settings.max_upload_bytes, on_file=on_file)
        if count == 0:
            raise MalformedUploadError("no file parts: send files in multipart fields named 'files'")
    except MalformedUploadError:
        # A malformed request leaves nothing behind, not even the files that were complete before it broke off.
        await run_in_threadpool(undo_uploads, session, storage=storage, outcomes=outcomes)
        session.commit()
        raise
    for outcome in outcomes:
        if outcome.status == "accepted":
            enqueue(TASK_PREPARE_ASSET, str(outcome.asset_id))
    body = UploadPublic(
        files=[UploadedFilePublic.model_validate(o.public()) for o in outcomes],
        accepted=sum(o.status == "accepted" for o in outcomes),
        rejected=sum(o.status != "accepted" for o in outcomes),
    )
    codes = {o.status_code for o in outcomes}
    if body.rejected == 0:
        code = status.HTTP_201_CREATED
    elif body.accepted == 0 and len(codes) == 1:
        code = codes.pop()
    else:
        code = status.HTTP_207_MULTI_STATUS
    return JSONResponse(body.model_dump(mode="json"), status_code=code)


@router.post("/{job_id}/seal")
def post_seal(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """Close the job to new files and start its analysis. Sealing twice is harmless."""
    job, sealed_now = seal_job(session, tenant_id=tenant.id, job_id=job_id)
    session.commit()
    if sealed_now:
        enqueue(TASK_PLAN_JOB, str(job.id))
    return job_public(session, job)


@router.get("/{job_id}/assets")
def get_job_assets(
    job_id: uuid.UUID,
    session: SessionDep,
    tenant: TenantDep,
    asset_status: Annotated[AssetStatus | None, Query(alias="status")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> AssetsPublic:
    """The job's assets with status, errors, tags and full results."""
    assets, count = list_assets(
        session, tenant_id=tenant.id, job_id=job_id, status=asset_status, limit=limit, offset=offset
    )
    return AssetsPublic(data=assets_public(session, assets), count=count)
