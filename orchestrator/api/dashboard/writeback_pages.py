"""Write-back from the dashboard: start one for a finished job (from its page) and undo one. The list of a job's
write-backs is shown on the job page (``_job_writeback.html``)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from orchestrator.api.dashboard.web import CsrfDep, MemberDep, PageError, WebIdentity
from orchestrator.api.deps import SessionDep, StorageDep
from orchestrator.api.routes.writeback import WritebackCreate, start_writeback, undo_writeback
from orchestrator.errors import ConflictError, NotFoundError

router = APIRouter(include_in_schema=False)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {key: value for key, value in form.multi_items() if isinstance(value, str)}


FormDep = Annotated[dict[str, str], Depends(_form)]


def _tenant(identity: WebIdentity) -> uuid.UUID:
    assert identity.tenant_id is not None  # MemberDep guarantees it
    return identity.tenant_id


def _id_or_404(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise PageError(404, "Not found", f"There is no such {what}.") from None


@router.post("/jobs/{job_id}/writeback")
def writeback_from_page(
    job_id: str, form: FormDep, session: SessionDep, identity: MemberDep, _: CsrfDep
) -> RedirectResponse:
    """Start writing the job's tags into its files, then show the job page with the write-back listed."""
    job = _id_or_404(job_id, "job")
    mode = "replace" if form.get("mode") == "replace" else "append"
    body = WritebackCreate(job_id=job, mode=mode, faces=form.get("faces") == "1")
    try:
        start_writeback(session, tenant_id=_tenant(identity), body=body)
    except NotFoundError:
        raise PageError(404, "Not found", "There is no such job.") from None
    except ConflictError as exc:
        raise PageError(409, "Not yet", exc.message) from None
    return RedirectResponse(f"/jobs/{job}#writeback", status_code=303)


@router.post("/writeback/{write_id}/undo")
def undo_from_page(
    write_id: str, session: SessionDep, storage: StorageDep, identity: MemberDep, _: CsrfDep
) -> RedirectResponse:
    """Put back the files a write-back replaced, then show its job's page."""
    try:
        write = undo_writeback(
            session, storage, tenant_id=_tenant(identity), write_id=_id_or_404(write_id, "write-back")
        )
    except NotFoundError:
        raise PageError(404, "Not found", "There is no such write-back.") from None
    except ConflictError as exc:
        raise PageError(409, "Cannot undo", exc.message) from None
    job_id = write.scope.get("job_id")
    return RedirectResponse(f"/jobs/{job_id}#writeback" if job_id else "/jobs", status_code=303)
