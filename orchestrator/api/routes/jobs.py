"""Jobs: create, upload files, seal, status, list, and the job's assets with results."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session

from orchestrator.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from orchestrator.api.error_responses import DESCRIPTIONS, TENANT_ERRORS, ErrorBody, error_responses
from orchestrator.api.paging import Offset
from orchestrator.api.presenters import assets_public, cancel_public, job_public, report_public, retry_public
from orchestrator.api.schemas import (
    AssetsPublic,
    CancelPublic,
    JobCreate,
    JobPublic,
    JobReportPublic,
    JobsPublic,
    RetryPublic,
    UploadedFilePublic,
    UploadPublic,
)
from orchestrator.api.uploads import MalformedUploadError, ReceivedFile, receive_files
from orchestrator.db.models import TenantSettingsRow
from orchestrator.db.session import get_sessionmaker
from orchestrator.enums import AssetStatus, JobStatus
from orchestrator.errors import ConflictError
from orchestrator.ingest import FileOutcome, finish_upload, job_accepts_files, undo_uploads
from orchestrator.job_control import RetryOutcome, cancel_job, retry_failed
from orchestrator.job_reports import csv_lines, iter_result_rows, job_report, json_chunks
from orchestrator.jobs import create_job, get_job, list_assets, list_jobs, seal_job
from orchestrator.settings import Settings
from orchestrator.tasks.app import enqueue
from orchestrator.tasks.constants import TASK_PLAN_JOB, TASK_PREPARE_ASSET
from orchestrator.tenant_settings import get_tenant_settings

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=TENANT_ERRORS)
NOT_FOUND = error_responses(404)

Limit = Annotated[int, Query(ge=1, le=1000)]


def tenant_default_analyzers(session: Session, *, tenant_id: uuid.UUID, settings: Settings) -> list[str]:
    """The analyzers a new job of the tenant runs unless it names its own: the tenant's saved choice, else the
    deployment's default (``ORCH_DEFAULT_ANALYZERS``)."""
    if session.get(TenantSettingsRow, tenant_id) is None:
        return list(settings.default_analyzers)
    return get_tenant_settings(session, tenant_id=tenant_id).analyzers or list(settings.default_analyzers)


def job_options_with_tenant_defaults(
    options: dict[str, dict[str, Any]],
    *,
    analyzers: list[str],
    vocabulary: dict[str, list[str]] | None,
    nsfw_threshold: float,
) -> dict[str, dict[str, Any]]:
    """The job's analyzer options with the tenant's vocabulary and NSFW threshold filled in where the request left
    them out (a request's own value always wins)."""
    merged = {name: dict(values) for name, values in options.items()}
    if vocabulary is not None and "clip" in analyzers and "vocabulary" not in merged.get("clip", {}):
        merged.setdefault("clip", {})["vocabulary"] = {k: list(v) for k, v in vocabulary.items()}
    if "nsfw" in analyzers and "threshold" not in merged.get("nsfw", {}):
        merged.setdefault("nsfw", {})["threshold"] = nsfw_threshold
    return merged


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(409))
def post_job(body: JobCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> JobPublic:
    """Open a job; then upload files to it and seal it.

    Analyzers default to the tenant's settings (then the deployment's default); the tenant's vocabulary and NSFW
    threshold apply unless the request's options set their own.
    """
    defaults = get_tenant_settings(session, tenant_id=tenant.id)
    default_analyzers = tenant_default_analyzers(session, tenant_id=tenant.id, settings=settings)
    chosen = body.analyzers or default_analyzers
    job = create_job(
        session,
        tenant_id=tenant.id,
        name=body.name,
        analyzers=chosen,
        options=job_options_with_tenant_defaults(
            body.options,
            analyzers=chosen,
            vocabulary=defaults.vocabulary,
            nsfw_threshold=defaults.nsfw_threshold,
        ),
        default_analyzers=default_analyzers,
    )
    session.commit()
    return job_public(session, job)


@router.get("")
def get_jobs(session: SessionDep, tenant: TenantDep, limit: Limit = 50, offset: Offset = 0) -> JobsPublic:
    """The tenant's jobs, newest first."""
    jobs, count = list_jobs(session, tenant_id=tenant.id, limit=limit, offset=offset)
    return JobsPublic(data=[job_public(session, j) for j in jobs], count=count)


@router.get("/{job_id}", responses=NOT_FOUND)
def get_job_status(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """A job's status, progress counts and notices."""
    return job_public(session, get_job(session, tenant_id=tenant.id, job_id=job_id))


@router.post(
    "/{job_id}/files",
    status_code=status.HTTP_201_CREATED,
    # 409 and 422 are also the answer when every file was a duplicate (or unreadable): then the body is the upload's.
    responses={
        **NOT_FOUND,
        201: {"model": UploadPublic},
        207: {"model": UploadPublic},
        409: {"model": UploadPublic | ErrorBody, "description": DESCRIPTIONS[409]},
        413: {"model": UploadPublic},
        415: {"model": UploadPublic},
        422: {"model": UploadPublic | ErrorBody, "description": DESCRIPTIONS[422]},
    },
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
        if job.status == JobStatus.CANCELLED:
            raise ConflictError("the job was cancelled; create a new job for more files", code="job_cancelled")
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


@router.post("/{job_id}/seal", responses=NOT_FOUND)
def post_seal(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """Close the job to new files and start its analysis. Sealing twice is harmless."""
    job, sealed_now = seal_job(session, tenant_id=tenant.id, job_id=job_id)
    session.commit()
    if sealed_now:
        enqueue(TASK_PLAN_JOB, str(job.id))
    return job_public(session, job)


@router.get("/{job_id}/assets", responses=NOT_FOUND)
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


@router.post("/{job_id}/cancel", responses=error_responses(404, 409))
def post_cancel(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> CancelPublic:
    """Cancel a job: its waiting and running batches stop, its unanalyzed files fail as ``cancelled``, and nothing
    more of it runs or is paid for. Files already analyzed keep their results. Cancelling twice is harmless; a job
    that is done answers 409 ``job_finished``."""
    outcome = cancel_job(session, tenant_id=tenant.id, job_id=job_id)
    session.commit()
    return cancel_public(session, outcome)


def send_retry(outcome: RetryOutcome) -> None:
    """After the retry is committed: prepare the files that go back to the start, then plan the job."""
    for asset_id in outcome.to_prepare:
        enqueue(TASK_PREPARE_ASSET, str(asset_id))
    if outcome.plan:
        enqueue(TASK_PLAN_JOB, str(outcome.job.id))


@router.post("/{job_id}/retry", responses=NOT_FOUND)
def post_retry(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> RetryPublic:
    """Retry the job's failed files: those with stored bytes go back to work (a done or cancelled job runs again);
    files rejected at upload have no bytes and are listed as not retryable."""
    outcome = retry_failed(session, tenant_id=tenant.id, job_id=job_id)
    session.commit()
    send_retry(outcome)
    return retry_public(session, outcome)


@router.get("/{job_id}/report", responses=NOT_FOUND)
def get_report(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> JobReportPublic:
    """Where the job's batches ran (cloud instance and GPU, local GPU worker, CPU), the estimated cost so far, and
    its failed files with their reasons."""
    job = get_job(session, tenant_id=tenant.id, job_id=job_id)
    return report_public(session, job, job_report(session, tenant_id=tenant.id, job_id=job.id))


ExportFormat = Literal["json", "csv"]


def results_download(
    session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, fmt: ExportFormat
) -> StreamingResponse:
    """A job's results as a JSON or CSV download, streamed page by page from a session of its own."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    summary = job_public(session, job).model_dump(mode="json")
    stem = quote(f"job-{job.id}-results", safe="")

    def body() -> Iterator[str]:
        with get_sessionmaker()() as own:
            rows = iter_result_rows(own, tenant_id=tenant_id, job_id=job_id)
            yield from (csv_lines(rows) if fmt == "csv" else json_chunks(summary, rows))

    media_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
    return StreamingResponse(
        body(),
        media_type=media_type,
        headers={
            "Content-Disposition": f"attachment; filename={stem}.{fmt}",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )


@router.get("/{job_id}/results", response_class=StreamingResponse, responses=NOT_FOUND)
def get_results(
    job_id: uuid.UUID,
    session: SessionDep,
    tenant: TenantDep,
    fmt: Annotated[ExportFormat, Query(alias="format")] = "json",
) -> StreamingResponse:
    """Download the job's results, one row per file: name, status, media kind, tags with scores, object, face and
    person counts, transcript, NSFW score and error. ``format=json`` (default) or ``format=csv``."""
    return results_download(session, tenant_id=tenant.id, job_id=job_id, fmt=fmt)
