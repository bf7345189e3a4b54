"""Jobs in the dashboard: the list and one job's page, both refreshed in place while work goes on (``live.js`` polls
the ``/live`` fragments until they say they are final); cancel, retry failed files, and result downloads.

Ids in the path are parsed here rather than by FastAPI, so that a malformed id answers the same 404 page as another
tenant's job.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.api.dashboard.web import CsrfDep, MemberDep, PageError, WebIdentity, render
from orchestrator.api.deps import SessionDep
from orchestrator.api.routes.jobs import results_download, send_retry
from orchestrator.db.models import Batch, Job
from orchestrator.enums import Backend, BatchStatus, JobStatus
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.job_control import cancel_job, retry_failed
from orchestrator.job_reports import backend_label, job_report
from orchestrator.jobs import get_job, job_progress, list_jobs, progress_for_jobs
from orchestrator.writeback.records import writes_of_job

router = APIRouter(include_in_schema=False)

JOBS_PER_PAGE = 25
LIVE_INTERVAL_MS = 3000
FINAL_STATES = frozenset({JobStatus.DONE, JobStatus.CANCELLED})
# Messages shown after a redirect are chosen by key, so nothing from the address is echoed into the page.
NOTICES = {
    "cancelled": "The job was cancelled. Files already analyzed keep their results.",
    "already-cancelled": "The job was already cancelled.",
    "retried": "The failed files were sent back to work.",
    "nothing-to-retry": "No failed file can be retried: files rejected at upload have no stored bytes.",
}


def _uuid_or_404(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise PageError(404, "Not found", f"There is no such {what}.") from None


def _tenant(identity: WebIdentity) -> uuid.UUID:
    assert identity.tenant_id is not None  # MemberDep guarantees it
    return identity.tenant_id


def _job_or_404(session: Session, identity: WebIdentity, raw_id: str) -> Job:
    try:
        return get_job(session, tenant_id=_tenant(identity), job_id=_uuid_or_404(raw_id, "job"))
    except NotFoundError:
        raise PageError(404, "Not found", "There is no such job.") from None


def _page_number(raw: str | None) -> tuple[int, str | None]:
    if not raw:
        return 1, None
    try:
        number = int(raw)
    except ValueError:
        return 1, "That page number is not a number; showing the first page."
    if number < 1 or number > 100_000:
        return 1, "That page does not exist; showing the first page."
    return number, None


def _ran_on(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """Where each job's finished batches ran, as labels (cloud instance, local GPU worker, in-process CPU)."""
    ran: dict[uuid.UUID, list[str]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        rows = session.execute(
            select(Batch.job_id, Batch.backend)
            .where(Batch.job_id.in_(job_ids), Batch.status == BatchStatus.DONE, Batch.backend.is_not(None))
            .group_by(Batch.job_id, Batch.backend)
        )
        order = [str(b) for b in Backend]
        for job_id, backend in sorted(rows, key=lambda r: order.index(r[1]) if r[1] in order else 99):
            ran[job_id].append(backend_label(backend))
    return ran


def _jobs_context(session: Session, identity: WebIdentity, page: int) -> dict[str, Any]:
    tenant_id = _tenant(identity)
    jobs, count = list_jobs(session, tenant_id=tenant_id, limit=JOBS_PER_PAGE, offset=(page - 1) * JOBS_PER_PAGE)
    ids = [j.id for j in jobs]
    waiting = dict(
        session.execute(
            select(Batch.job_id, func.count())
            .where(Batch.job_id.in_(ids), Batch.status == BatchStatus.PENDING)
            .group_by(Batch.job_id)
        ).all()
    )
    return {
        "jobs": jobs,
        "progress": progress_for_jobs(session, job_ids=ids),
        "ran_on": _ran_on(session, ids),
        "waiting": waiting,
        "count": count,
        "page": page,
        "pages": max(1, -(-count // JOBS_PER_PAGE)),
        "final": all(j.status in FINAL_STATES for j in jobs),
        "live_url": f"/jobs/live?page={page}",
        "live_interval_ms": LIVE_INTERVAL_MS,
    }


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep, identity: MemberDep, page: str | None = None) -> HTMLResponse:
    """The tenant's jobs, newest first, with live status and progress."""
    number, problem = _page_number(page)
    context = _jobs_context(session, identity, number)
    context["error"] = problem
    return render(request, "jobs.html", identity, context)


@router.get("/jobs/live", response_class=HTMLResponse)
def jobs_live(request: Request, session: SessionDep, identity: MemberDep, page: str | None = None) -> HTMLResponse:
    """The job table alone, for polling; final once every job on the page is done or cancelled."""
    number, _ = _page_number(page)
    return render(request, "_jobs_rows.html", identity, _jobs_context(session, identity, number))


def _job_context(session: Session, identity: WebIdentity, job: Job) -> dict[str, Any]:
    report = job_report(session, tenant_id=_tenant(identity), job_id=job.id)
    progress = job_progress(session, job_id=job.id)
    running = report.batch_counts.get(str(BatchStatus.RUNNING), 0) + report.batch_counts.get(
        str(BatchStatus.PENDING), 0
    )
    return {
        "job": job,
        "progress": progress,
        "report": report,
        "retryable": sum(1 for f in report.failed if f.retryable),
        "can_cancel": job.status not in FINAL_STATES,
        "final": job.status in FINAL_STATES and running == 0,
        "live_url": f"/jobs/{job.id}/live",
        "live_interval_ms": LIVE_INTERVAL_MS,
    }


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request, job_id: str, session: SessionDep, identity: MemberDep, notice: str | None = None
) -> HTMLResponse:
    """One job: live status and progress, where its batches ran and what they cost, its failed files, and actions."""
    job = _job_or_404(session, identity, job_id)
    context = _job_context(session, identity, job)
    context["notice"] = NOTICES.get(notice or "")
    context["writebacks"] = writes_of_job(session, tenant_id=_tenant(identity), job_id=job.id)
    return render(request, "job.html", identity, context)


@router.get("/jobs/{job_id}/live", response_class=HTMLResponse)
def job_live(request: Request, job_id: str, session: SessionDep, identity: MemberDep) -> HTMLResponse:
    """The changing part of the job page, for polling; final once the job is done or cancelled."""
    job = _job_or_404(session, identity, job_id)
    return render(request, "_job_live.html", identity, _job_context(session, identity, job))


@router.post("/jobs/{job_id}/cancel", response_model=None)
def cancel_from_page(request: Request, job_id: str, session: SessionDep, identity: MemberDep, _: CsrfDep) -> Response:
    """Cancel the job, then show its page again."""
    job = _job_or_404(session, identity, job_id)
    try:
        outcome = cancel_job(session, tenant_id=_tenant(identity), job_id=job.id)
    except ConflictError as exc:
        session.rollback()
        context = _job_context(session, identity, get_job(session, tenant_id=_tenant(identity), job_id=job.id))
        context["error"] = exc.message
        return render(request, "job.html", identity, context, status_code=409)
    session.commit()
    notice = "cancelled" if outcome.cancelled_now else "already-cancelled"
    return RedirectResponse(f"/jobs/{job.id}?notice={notice}", status_code=303)


@router.post("/jobs/{job_id}/retry")
def retry_from_page(job_id: str, session: SessionDep, identity: MemberDep, _: CsrfDep) -> RedirectResponse:
    """Send the job's failed files back to work, then show its page again."""
    job = _job_or_404(session, identity, job_id)
    outcome = retry_failed(session, tenant_id=_tenant(identity), job_id=job.id)
    session.commit()
    send_retry(outcome)
    notice = "retried" if outcome.retried else "nothing-to-retry"
    return RedirectResponse(f"/jobs/{job.id}?notice={notice}", status_code=303)


@router.get("/jobs/{job_id}/results.json", response_class=StreamingResponse)
def results_json(job_id: str, session: SessionDep, identity: MemberDep) -> StreamingResponse:
    """The job's results as a JSON download."""
    job = _job_or_404(session, identity, job_id)
    return results_download(session, tenant_id=_tenant(identity), job_id=job.id, fmt="json")


@router.get("/jobs/{job_id}/results.csv", response_class=StreamingResponse)
def results_csv(job_id: str, session: SessionDep, identity: MemberDep) -> StreamingResponse:
    """The job's results as a CSV download."""
    job = _job_or_404(session, identity, job_id)
    return results_download(session, tenant_id=_tenant(identity), job_id=job.id, fmt="csv")
