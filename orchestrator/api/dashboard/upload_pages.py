"""The upload page. The browser does the work (``upload.js``): it opens a job through the REST API, streams each file
to it as its own request, a few at a time, and seals the job when asked; the page itself only says what to send."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from orchestrator.api.dashboard.web import MemberDep, render
from orchestrator.api.deps import SessionDep, SettingsDep
from orchestrator.api.routes.jobs import tenant_default_analyzers
from orchestrator.jobs import KNOWN_ANALYZERS

router = APIRouter(include_in_schema=False)

# Parallel uploads per page: enough to hide each request's latency, few enough not to starve the API's workers.
MAX_PARALLEL_UPLOADS = 3
ANALYZER_HELP = {
    "clip": "tags from the vocabulary, NSFW score, similarity",
    "objects": "objects and people (YOLO), with boxes",
    "faces": "faces, with boxes",
    "transcribe": "speech to text (Whisper), with timestamps",
    "nsfw": "NSFW classifier",
}


@router.get("/upload", response_class=HTMLResponse)
def upload_page(request: Request, session: SessionDep, settings: SettingsDep, identity: MemberDep) -> HTMLResponse:
    """Drag and drop files or folders, or pick them; each file shows its progress and the server's answer."""
    assert identity.tenant_id is not None  # MemberDep guarantees it
    chosen = tenant_default_analyzers(session, tenant_id=identity.tenant_id, settings=settings)
    return render(
        request,
        "upload.html",
        identity,
        {
            "analyzers": [(name, ANALYZER_HELP.get(name, ""), name in chosen) for name in KNOWN_ANALYZERS],
            "max_upload_bytes": settings.max_upload_bytes,
            "max_parallel": MAX_PARALLEL_UPLOADS,
        },
    )
