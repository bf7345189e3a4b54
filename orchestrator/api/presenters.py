"""Turn rows into public schemas."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.api.schemas import (
    AssetPublic,
    BackendUsePublic,
    BatchLinePublic,
    CancelPublic,
    FailedFilePublic,
    GalleryItemPublic,
    GalleryPublic,
    JobPublic,
    JobReportPublic,
    NotRetryablePublic,
    ProgressPublic,
    RetryPublic,
    TagPublic,
)
from orchestrator.db.models import Asset, Job
from orchestrator.gallery import AssetCard, GalleryPage
from orchestrator.job_control import CancelOutcome, RetryOutcome
from orchestrator.job_reports import JobReport
from orchestrator.jobs import job_progress, results_for_assets


def job_public(session: Session, job: Job) -> JobPublic:
    """A job with its live progress counts."""
    progress = job_progress(session, job_id=job.id)
    return JobPublic(
        id=job.id,
        name=job.name,
        status=str(job.status),
        analyzers=list(job.analyzers),
        created_at=job.created_at,
        sealed_at=job.sealed_at,
        finished_at=job.finished_at,
        progress=ProgressPublic(**progress.__dict__),
        notices={str(k): str(v) for k, v in job.notices.items()},
    )


def assets_public(session: Session, assets: list[Asset]) -> list[AssetPublic]:
    """A page of assets with their tags and result payloads (two queries for the whole page)."""
    if not assets:
        return []
    payloads, tags = results_for_assets(session, tenant_id=assets[0].tenant_id, asset_ids=[a.id for a in assets])
    return [
        AssetPublic(
            id=a.id,
            job_id=a.job_id,
            name=a.original_name,
            media_kind=a.media_kind,
            mime_type=a.mime_type,
            size=a.size_bytes,
            sha256=a.sha256,
            status=str(a.status),
            error_code=a.error_code,
            error_message=a.error_message,
            width=a.width,
            height=a.height,
            duration_s=a.duration_s,
            tags=[TagPublic(tag=t.tag, score=round(t.score, 4), analyzer=t.analyzer) for t in tags[a.id]],
            results=payloads[a.id],
        )
        for a in assets
    ]


def cancel_public(session: Session, outcome: CancelOutcome) -> CancelPublic:
    """The answer to a cancel."""
    return CancelPublic(
        job=job_public(session, outcome.job),
        cancelled_now=outcome.cancelled_now,
        stopped_batches=outcome.stopped_batches,
        cancelled_files=outcome.cancelled_assets,
    )


def retry_public(session: Session, outcome: RetryOutcome) -> RetryPublic:
    """The answer to a retry."""
    return RetryPublic(
        job=job_public(session, outcome.job),
        retried=outcome.retried,
        not_retryable=[NotRetryablePublic(**asdict(n)) for n in outcome.not_retryable],
    )


def report_public(session: Session, job: Job, report: JobReport) -> JobReportPublic:
    """A job's backends, estimated cost and failures."""
    return JobReportPublic(
        job=job_public(session, job),
        backends=[BackendUsePublic(**{k: v for k, v in asdict(use).items() if k != "key"}) for use in report.backends],
        batches=[
            BatchLinePublic(
                **{**{k: v for k, v in asdict(line).items() if k != "backend_label"}, "backend": line.backend_label}
            )
            for line in report.batches
        ],
        cost_usd=report.cost_usd,
        cost_is_estimate=report.cost_is_estimate,
        failed=[FailedFilePublic(**asdict(f)) for f in report.failed],
        failed_total=report.failed_total,
    )


def card_public_fields(card: AssetCard) -> dict[str, Any]:
    """The :class:`AssetCardPublic` fields of any asset card, for building its REST form."""
    return {
        "id": card.id,
        "job_id": card.job_id,
        "name": card.name,
        "media_kind": card.media_kind,
        "status": card.status,
        "created_at": card.created_at,
        "size": card.size_bytes,
        "width": card.width,
        "height": card.height,
        "duration_s": card.duration_s,
        "thumbnail_url": f"/api/v1/assets/{card.id}/thumbnail" if card.has_thumbnail else None,
    }


def gallery_public(page: GalleryPage) -> GalleryPublic:
    """A gallery page for the REST API."""
    return GalleryPublic(
        data=[
            GalleryItemPublic(
                **card_public_fields(item),
                error_code=item.error_code,
                error_message=item.error_message,
                tags=[TagPublic(tag=t.tag, score=t.score, analyzer=t.analyzer) for t in item.tags],
                nsfw_score=item.nsfw_score,
            )
            for item in page.items
        ],
        count=page.total,
        older=page.older,
        newer=page.newer,
    )
