"""Signing in and out of the dashboard.

Sign-in takes a username and password, or an API key (a tenant's key opens a member session; the deployment's admin
token opens an operator session). Before a session exists, the sign-in form is protected against cross-site posts by
a double-submit token: a cookie and a hidden field that must match. Failed attempts are limited per client address,
across all API processes (``rate_limiting.LOGIN_FAILURES``).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from orchestrator.accounts import authenticate
from orchestrator.api.dashboard.web import (
    SESSION_COOKIE,
    CsrfDep,
    WebIdentityDep,
    render,
    safe_next,
    session_identity,
)
from orchestrator.api.deps import SessionDep, SettingsDep
from orchestrator.api.rate_limiting import LOGIN_FAILURES, client_address, limiter_of
from orchestrator.clock import utcnow
from orchestrator.security import constant_time_equals
from orchestrator.web_sessions import SESSION_MAX_AGE, end, start_for_admin, start_for_api_key, start_for_user

router = APIRouter(include_in_schema=False)

LOGIN_CSRF_COOKIE = "mas_login"
MAX_FAILURES = LOGIN_FAILURES.burst


def _failures_key(request: Request) -> str:
    return f"login-failures:{client_address(request)}"


def _wait_before_sign_in_s(request: Request) -> int:
    """Seconds until this client may try again (0 when it may now); shared by all API processes."""
    limiter = limiter_of(request)
    if limiter is None:
        return 0
    decision = limiter.take(_failures_key(request), LOGIN_FAILURES, cost=0)
    return 0 if decision.allowed else decision.retry_after_s


def _count_failure(request: Request) -> None:
    limiter = limiter_of(request)
    if limiter is not None:
        limiter.take(_failures_key(request), LOGIN_FAILURES)


def _forget_failures(request: Request) -> None:
    limiter = limiter_of(request)
    if limiter is not None:
        limiter.reset(_failures_key(request))


def _secure(request: Request, cookie_secure: bool | None) -> bool:
    return cookie_secure if cookie_secure is not None else request.url.scheme == "https"


def _login_page(request: Request, *, next_path: str, error: str = "", status_code: int = 200, **extra: str) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        None,
        {"next": safe_next(next_path), "error": error, "login_token": token, **extra},
        status_code=status_code,
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=1800, httponly=True, samesite="strict", path="/login")
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/", response_model=None)
def home(request: Request) -> Response:
    """Members start at their jobs; operators without a tenant at the operator view; others sign in."""
    identity = session_identity(request)
    if identity is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse("/jobs" if identity.tenant_id is not None else "/operator", status_code=303)


@router.get("/login", response_model=None)
def login_form(request: Request, next: str = "/") -> Response:
    """The sign-in page (or straight on when already signed in)."""
    if session_identity(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    signed_out = "signed_out" in request.query_params
    return _login_page(request, next_path=next, notice="You are signed out." if signed_out else "")


@router.post("/login", response_model=None)
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    login_token: Annotated[str, Form(max_length=200)] = "",
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    api_key: Annotated[str, Form(max_length=300)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    """Check the credentials, open a server-side session and set its cookie."""
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not constant_time_equals(cookie, login_token):
        return _login_page(
            request, next_path=next, error="The sign-in form expired. Please try again.", status_code=400
        )
    wait_s = _wait_before_sign_in_s(request)
    if wait_s:
        response = _login_page(
            request,
            next_path=next,
            error=f"Too many failed sign-ins. Try again in {wait_s} seconds.",
            status_code=429,
        )
        response.headers["Retry-After"] = str(wait_s)
        return response
    now = utcnow()
    token: str | None = None
    if api_key.strip():
        presented = api_key.strip()
        if settings.admin_token and constant_time_equals(presented, settings.admin_token):
            token = start_for_admin(session, now=now)
        else:
            token = start_for_api_key(session, plaintext=presented, now=now)
        failure = "That key is unknown or revoked."
    else:
        user = authenticate(session, username=username, password=password) if username and password else None
        if user is not None:
            token = start_for_user(session, user=user, now=now)
        failure = "Wrong username or password."
    if token is None:
        _count_failure(request)
        session.commit()
        return _login_page(request, next_path=next, error=failure, status_code=401, username=username)
    session.commit()
    _forget_failures(request)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(SESSION_MAX_AGE.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=_secure(request, settings.session_cookie_secure),
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout", response_model=None)
def logout(request: Request, session: SessionDep, _identity: WebIdentityDep, _csrf: CsrfDep) -> Response:
    """End the session on the server and drop the cookie."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        end(session, token=token)
        session.commit()
    response = RedirectResponse("/login?signed_out=1", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/account", response_class=HTMLResponse)
def account(request: Request, identity: WebIdentityDep) -> HTMLResponse:
    """Who is signed in, and how to use the API from this account."""
    return render(request, "account.html", identity)
