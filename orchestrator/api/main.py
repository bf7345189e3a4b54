"""The FastAPI application: REST under /api/v1, the dashboard, health, and one error shape for every failure."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select, text

from orchestrator import __version__
from orchestrator.api.deps import AuthError, ForbiddenError
from orchestrator.api.routes import admin, assets, jobs, media
from orchestrator.api.uploads import MalformedUploadError
from orchestrator.db.models import Asset, Job
from orchestrator.db.session import get_sessionmaker
from orchestrator.errors import ConflictError, MediaAnalysisError, NotFoundError, UploadRejectedError
from orchestrator.settings import Settings, get_settings
from orchestrator.signing import MediaTokenError
from orchestrator.storage import LocalStorage

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))

STATUS_BY_ERROR: dict[type[MediaAnalysisError], int] = {
    AuthError: 401,
    ForbiddenError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    MalformedUploadError: 400,
    UploadRejectedError: 422,
    MediaTokenError: 403,
}


def _status_for(exc: MediaAnalysisError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Migrations must already have run (``orchestrator db upgrade``; ``orchestrator up`` does it)."""
    settings = settings or get_settings()
    app = FastAPI(title="AI Media Analysis", version=__version__, docs_url="/docs", openapi_url="/api/v1/openapi.json")
    app.state.storage = LocalStorage(settings.media_dir)
    app.state.settings = settings

    @app.exception_handler(MediaAnalysisError)
    async def domain_error(_: Request, exc: MediaAnalysisError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        return JSONResponse(
            {"detail": {"code": exc.code, "message": exc.message}}, status_code=_status_for(exc), headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in exc.errors()
        )
        return JSONResponse({"detail": {"code": "invalid_request", "message": problems}}, status_code=422)

    api = APIRouter(prefix="/api/v1")
    api.include_router(admin.router)
    api.include_router(jobs.router)
    api.include_router(assets.router)
    app.include_router(api)
    # Outside /api/v1: workers fetch media here with a signed token instead of a tenant key.
    app.include_router(media.router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        with get_sessionmaker()() as session:
            session.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request) -> HTMLResponse:
        with get_sessionmaker()() as session:
            job_count = session.scalar(select(func.count()).select_from(Job)) or 0
            asset_count = session.scalar(select(func.count()).select_from(Asset)) or 0
        return TEMPLATES.TemplateResponse(
            request,
            "index.html",
            {
                "mode": "embedded" if settings.is_embedded else "production",
                "database": settings.database_url.split("://", 1)[0],
                "jobs": job_count,
                "assets": asset_count,
            },
        )

    return app
