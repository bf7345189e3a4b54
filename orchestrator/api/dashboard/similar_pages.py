"""The "more like this" page: ``/similar?asset=ID`` (assets like one) or ``/similar?text=...`` (pictures matching a
text), as gallery cards with their similarity. A query that cannot be answered shows why, never an error page."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from gpu_worker.text_embedding import MAX_TEXT_CHARS
from orchestrator.api.dashboard.web import MemberDep, PageError, render
from orchestrator.api.deps import SessionDep
from orchestrator.errors import MediaAnalysisError, NotFoundError
from orchestrator.jobs import get_asset
from orchestrator.similarity.service import SimilarResult, similar_to_asset, similar_to_text
from orchestrator.tenant_settings import get_tenant_settings

router = APIRouter(include_in_schema=False)


@router.get("/similar", response_class=HTMLResponse)
def similar_page(request: Request, session: SessionDep, identity: MemberDep) -> HTMLResponse:
    """Assets like ``asset``, or pictures matching ``text``; a form to search by text."""
    assert identity.tenant_id is not None  # MemberDep guarantees it
    raw_asset = request.query_params.get("asset", "").strip()
    text = request.query_params.get("text", "").strip()
    result: SimilarResult | None = None
    source = None
    problem = None
    try:
        if raw_asset:
            try:
                source = get_asset(session, tenant_id=identity.tenant_id, asset_id=uuid.UUID(raw_asset))
            except (ValueError, NotFoundError):
                raise PageError(404, "Not found", "There is no such asset.") from None
            result = similar_to_asset(session, tenant_id=identity.tenant_id, asset_id=source.id)
        elif text:
            if len(text) > MAX_TEXT_CHARS:
                problem = f"Use at most {MAX_TEXT_CHARS} characters."
            else:
                result = similar_to_text(session, tenant_id=identity.tenant_id, text=text)
    except MediaAnalysisError as exc:  # no embedding, no worker for text, another model: said on the page
        problem = exc.message
    threshold = get_tenant_settings(session, tenant_id=identity.tenant_id).nsfw_threshold
    return render(
        request,
        "similar.html",
        identity,
        {
            "source": source,
            "text": text,
            "result": result,
            "problem": problem,
            "threshold": threshold,
            "max_text_chars": MAX_TEXT_CHARS,
        },
    )
