"""Rate limits in the web layer: one limiter per app, a 429 answer with ``Retry-After``, and the rules in use.

API requests are limited per tenant once the caller is known (``deps.get_tenant``); requests whose credentials are
refused are limited per client address, as are failed dashboard sign-ins (a much tighter rule).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from orchestrator.api.dashboard.web import render, session_identity
from orchestrator.rate_limits import RateLimitedError, RateLimiter, Rule, limiter_for
from orchestrator.settings import Settings

# Failed sign-ins: a bucket of 10 that refills one attempt every 30 s (10 in 5 minutes once spent).
LOGIN_FAILURES = Rule(per_minute=2.0, burst=10)


def install_rate_limits(app: FastAPI, settings: Settings) -> None:
    """Give ``app`` its limiter (Redis when the broker is Redis, else in-process) and its 429 answer."""
    app.state.rate_limiter = limiter_for(settings.broker_url)
    app.state.request_rule = Rule(per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst)

    @app.exception_handler(RateLimitedError)
    async def rate_limited(request: Request, exc: RateLimitedError) -> Response:
        headers = {"Retry-After": str(exc.retry_after_s)}
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"detail": {"code": exc.code, "message": exc.message}}, status_code=429, headers=headers
            )
        context = {"title": "Too many requests", "message": exc.message}
        page = render(request, "error.html", session_identity(request), context, 429)
        page.headers.update(headers)
        return page


def limiter_of(request: Request) -> RateLimiter | None:
    """The app's limiter (None for an app built without ``install_rate_limits``)."""
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    return limiter


def client_address(request: Request) -> str:
    """The caller's address as the server saw it (behind nginx, uvicorn's proxy headers put the real one here)."""
    return request.client.host if request.client else "unknown"


def _enforce(request: Request, key: str, who: str) -> None:
    limiter = limiter_of(request)
    if limiter is None:
        return
    decision = limiter.take(key, request.app.state.request_rule)
    if not decision.allowed:
        raise RateLimitedError(
            f"too many requests for {who}; try again in {decision.retry_after_s} s",
            retry_after_s=decision.retry_after_s,
        )


def enforce_tenant_limit(request: Request, *, tenant_id: object) -> None:
    """Count one request of a tenant; raise :class:`RateLimitedError` when its bucket is empty."""
    _enforce(request, f"tenant:{tenant_id}", "this tenant")


def enforce_address_limit(request: Request) -> None:
    """Count one request whose credentials were refused, against the caller's address."""
    _enforce(request, f"address:{client_address(request)}", "this address")
