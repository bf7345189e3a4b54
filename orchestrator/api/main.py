"""The FastAPI application: REST under /api/v1, the dashboard, health, and one error shape for every failure."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator import __version__
from orchestrator.api.dashboard.routes import dashboard_router
from orchestrator.api.dashboard.web import (
    LoginRequiredError,
    PageError,
    login_redirect_target,
    render,
    session_identity,
)
from orchestrator.api.deps import AuthError, ForbiddenError
from orchestrator.api.rate_limiting import install_rate_limits
from orchestrator.api.routes import admin, assets, duplicates, jobs, media
from orchestrator.api.routes import people as people_routes
from orchestrator.api.routes import search as search_routes
from orchestrator.api.routes import settings as settings_routes
from orchestrator.api.routes import similar as similar_routes
from orchestrator.api.routes import writeback as writeback_routes
from orchestrator.api.security_headers import SecurityHeadersMiddleware
from orchestrator.api.uploads import MalformedUploadError
from orchestrator.db.session import get_sessionmaker
from orchestrator.errors import ConflictError, MediaAnalysisError, NotFoundError, UploadRejectedError
from orchestrator.observability.api_metrics import install_observability
from orchestrator.people.service import InvalidPeopleRequestError
from orchestrator.search.query import SearchQueryError
from orchestrator.settings import Settings, get_settings
from orchestrator.signing import MediaTokenError
from orchestrator.similarity.errors import TextEncoderUnavailableError
from orchestrator.storage import LocalStorage

STATIC_DIR = Path(__file__).with_name("static")
NON_PAGE_PREFIXES = ("/api/", "/media/", "/healthz", "/static/", "/docs", "/redoc")
ERROR_TITLES = {
    400: "Bad request",
    401: "Sign in needed",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    405: "Not allowed",
    413: "Too large",
    422: "Cannot be processed",
    429: "Too many requests",
}

STATUS_BY_ERROR: dict[type[MediaAnalysisError], int] = {
    AuthError: 401,
    ForbiddenError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    MalformedUploadError: 400,
    UploadRejectedError: 422,
    MediaTokenError: 403,
    InvalidPeopleRequestError: 422,
    SearchQueryError: 422,
    TextEncoderUnavailableError: 503,
}


def _status_for(exc: MediaAnalysisError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def _is_page(request: Request) -> bool:
    """Whether a request is for a dashboard page (answered with HTML) rather than the API, media or health."""
    return not request.url.path.startswith(NON_PAGE_PREFIXES)


def _error_page(request: Request, status_code: int, title: str, message: str) -> Response:
    return render(request, "error.html", session_identity(request), {"title": title, "message": message}, status_code)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Migrations must already have run (``orchestrator db upgrade``; ``orchestrator up`` does it)."""
    settings = settings or get_settings()
    app = FastAPI(title="AI Media Analysis", version=__version__, docs_url="/docs", openapi_url="/api/v1/openapi.json")
    app.state.storage = LocalStorage(settings.media_dir)
    app.state.settings = settings

    app.add_middleware(SecurityHeadersMiddleware)
    install_observability(app, settings)  # request ids, HTTP metrics, GET /metrics, JSON logs
    install_rate_limits(app, settings)  # per-tenant token buckets, 429 with Retry-After
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(MediaAnalysisError)
    async def domain_error(request: Request, exc: MediaAnalysisError) -> Response:
        if _is_page(request):
            return _error_page(request, _status_for(exc), ERROR_TITLES.get(_status_for(exc), "Error"), exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        return JSONResponse(
            {"detail": {"code": exc.code, "message": exc.message}}, status_code=_status_for(exc), headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in exc.errors()
        )
        if _is_page(request):
            return _error_page(
                request, 400, "Bad request", f"This address has a value the page cannot use ({problems})."
            )
        return JSONResponse({"detail": {"code": "invalid_request", "message": problems}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_page(request):
            title = ERROR_TITLES.get(exc.status_code, "Error")
            message = "There is no such page." if exc.status_code == 404 else str(exc.detail)
            return _error_page(request, exc.status_code, title, message)
        if exc.status_code < 400:
            return await http_exception_handler(request, exc)
        # The API's one error shape for the framework's own errors too: an unparseable body (400), no route (404)...
        body = {"detail": {"code": f"http_{exc.status_code}", "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(LoginRequiredError)
    async def login_required(_: Request, exc: LoginRequiredError) -> Response:
        return RedirectResponse(login_redirect_target(exc.next_path), status_code=303)

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError) -> Response:
        return _error_page(request, exc.status_code, exc.title, exc.message)

    api = APIRouter(prefix="/api/v1")
    api.include_router(admin.router)
    api.include_router(jobs.router)
    api.include_router(assets.router)
    api.include_router(search_routes.router)
    api.include_router(people_routes.router)
    api.include_router(settings_routes.router)
    api.include_router(writeback_routes.router)
    api.include_router(duplicates.router)
    api.include_router(similar_routes.router)
    app.include_router(api)
    # Outside /api/v1: workers fetch media here with a signed token instead of a tenant key.
    app.include_router(media.router)
    app.include_router(dashboard_router())

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        with get_sessionmaker()() as session:
            session.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    return app
