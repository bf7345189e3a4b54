"""Turn rows into public schemas."""

from __future__ import annotations

from sqlalchemy.orm import Session

from orchestrator.api.schemas import AssetPublic, JobPublic, ProgressPublic, TagPublic
from orchestrator.db.models import Asset, Job
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
