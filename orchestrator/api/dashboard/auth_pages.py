"""Signing in and out of the dashboard.

Sign-in takes a username and password, or an API key (a tenant's key opens a member session; the deployment's admin
token opens an operator session). Before a session exists, the sign-in form is protected against cross-site posts by
a double-submit token: a cookie and a hidden field that must match. Failed attempts are limited per client address.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
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
from orchestrator.clock import utcnow
from orchestrator.security import constant_time_equals
from orchestrator.web_sessions import SESSION_MAX_AGE, end, start_for_admin, start_for_api_key, start_for_user

router = APIRouter(include_in_schema=False)

LOGIN_CSRF_COOKIE = "mas_login"
MAX_FAILURES = 10
FAILURE_WINDOW_S = 300.0


class LoginThrottle:
    """At most ``MAX_FAILURES`` failed sign-ins per client address in ``FAILURE_WINDOW_S`` (this process)."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.setdefault(client, deque())
        while times and now - times[0] > FAILURE_WINDOW_S:
            times.popleft()
        return times

    def retry_after_s(self, client: str) -> int:
        """Seconds until this client may try again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            if len(times) < MAX_FAILURES:
                return 0
            return int(FAILURE_WINDOW_S - (now - times[0])) + 1

    def failed(self, client: str) -> None:
        """Count a failed attempt."""
        now = time.monotonic()
        with self._lock:
            self._recent(client, now).append(now)
            if len(self._failures) > 10_000:
                self._failures = {k: v for k, v in self._failures.items() if v}

    def succeeded(self, client: str) -> None:
        """Forget a client's failures."""
        with self._lock:
            self._failures.pop(client, None)


THROTTLE = LoginThrottle()


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
    client = request.client.host if request.client else "unknown"
    wait_s = THROTTLE.retry_after_s(client)
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
        THROTTLE.failed(client)
        session.commit()
        return _login_page(request, next_path=next, error=failure, status_code=401, username=username)
    session.commit()
    THROTTLE.succeeded(client)
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
