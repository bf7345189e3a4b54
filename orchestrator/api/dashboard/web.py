"""What every dashboard page shares: the signed-in identity, its dependencies, CSRF checks and rendering.

Pages are server-rendered Jinja2 templates (autoescaped). A request without a valid session cookie is sent to
``/login``; every POST carries the session's CSRF token (a form field or the ``X-CSRF-Token`` header), checked in
constant time, on top of the SameSite cookie.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from orchestrator import __version__
from orchestrator.accounts import Role
from orchestrator.clock import utcnow
from orchestrator.db.session import get_sessionmaker
from orchestrator.security import constant_time_equals
from orchestrator.web_sessions import resolve

SESSION_COOKIE = "mas_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent.parent / "templates"))
TEMPLATES.env.globals["version"] = __version__


@dataclass(frozen=True)
class WebIdentity:
    """Who is signed in to this browser."""

    username: str
    role: str
    tenant_id: uuid.UUID | None
    tenant_name: str | None
    csrf_token: str

    @property
    def is_operator(self) -> bool:
        """Operators manage tenants and see every tenant's spend and instances."""
        return self.role == Role.OPERATOR


class PageError(Exception):
    """Stop and show an error page with this status, title and message."""

    def __init__(self, status_code: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status_code, self.title, self.message = status_code, title, message


class LoginRequiredError(Exception):
    """No valid session: the browser is sent to the sign-in page, then back to ``next_path``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def safe_next(path: str | None) -> str:
    """A same-site path to go back to after signing in; anything else (another host, a scheme) becomes ``/``."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or any(ord(c) < 32 for c in path):
        return "/"
    return path


def session_identity(request: Request) -> WebIdentity | None:
    """The identity of the request's session cookie, or None."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 200:
        return None
    cached: WebIdentity | None = getattr(request.state, "web_identity", None)
    if cached is not None:
        return cached
    with get_sessionmaker().begin() as session:
        found = resolve(session, token=token, now=utcnow())
    if found is None:
        return None
    identity = WebIdentity(
        username=found.username,
        role=found.role.value,
        tenant_id=found.tenant_id,
        tenant_name=found.tenant_name,
        csrf_token=found.csrf_token,
    )
    request.state.web_identity = identity
    return identity


def web_identity(request: Request) -> WebIdentity:
    """Dependency: the signed-in identity; without one the browser is redirected to ``/login``."""
    identity = session_identity(request)
    if identity is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequiredError(target)
    return identity


WebIdentityDep = Annotated[WebIdentity, Depends(web_identity)]


def require_member(identity: WebIdentityDep) -> WebIdentity:
    """Dependency: signed in and working in a tenant."""
    if identity.tenant_id is None:
        raise PageError(
            403,
            "No tenant",
            "You are signed in as an operator without a tenant. Open the operator view, or sign in as a tenant's user.",
        )
    return identity


def require_operator(identity: WebIdentityDep) -> WebIdentity:
    """Dependency: signed in with the operator role."""
    if not identity.is_operator:
        raise PageError(403, "Operators only", "This page is for the deployment's operators.")
    return identity


MemberDep = Annotated[WebIdentity, Depends(require_member)]
OperatorDep = Annotated[WebIdentity, Depends(require_operator)]


def csrf_matches(identity: WebIdentity, presented: str | None) -> bool:
    """Whether a presented CSRF token is this session's."""
    return bool(presented) and constant_time_equals(str(presented), identity.csrf_token)


async def check_csrf(request: Request, identity: WebIdentityDep) -> None:
    """Dependency for POST routes: the form field ``csrf_token`` or the ``X-CSRF-Token`` header must match."""
    presented = request.headers.get(CSRF_HEADER)
    if presented is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        presented = value if isinstance(value, str) else None
    if not csrf_matches(identity, presented):
        raise PageError(
            403, "Form expired", "This form was not sent from your current session. Reload the page and try again."
        )


CsrfDep = Annotated[None, Depends(check_csrf)]


def _section(path: str) -> str:
    first = path.strip("/").split("/", 1)[0]
    return {"assets": "gallery", "": "jobs"}.get(first, first)


def render(
    request: Request,
    template_name: str,
    identity: WebIdentity | None,
    context: dict[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """Render a page (or fragment) with the identity, its CSRF token and the current nav section."""
    values: dict[str, Any] = {
        "identity": identity,
        "csrf_token": identity.csrf_token if identity else "",
        "nav": _section(request.url.path),
    }
    values.update(context or {})
    return TEMPLATES.TemplateResponse(request, template_name, values, status_code=status_code)


def login_redirect_target(next_path: str) -> str:
    """The sign-in URL that comes back to ``next_path``."""
    return "/login?next=" + quote(safe_next(next_path), safe="/")
