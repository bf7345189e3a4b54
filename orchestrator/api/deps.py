"""Typed dependencies: the database session, the calling tenant, the admin check. Tenant scoping happens here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from orchestrator.api.dashboard.web import CSRF_HEADER, WebIdentity, csrf_matches, session_identity
from orchestrator.api.rate_limiting import enforce_address_limit, enforce_tenant_limit
from orchestrator.db.models import Tenant
from orchestrator.db.session import get_sessionmaker
from orchestrator.errors import MediaAnalysisError
from orchestrator.security import constant_time_equals
from orchestrator.settings import Settings, get_settings
from orchestrator.storage import LocalStorage
from orchestrator.tenants import tenant_for_api_key


class AuthError(MediaAnalysisError):
    """Missing or invalid credentials."""

    code = "unauthorized"


class ForbiddenError(MediaAnalysisError):
    """Valid credentials without the right to do this."""

    code = "forbidden"


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_session() -> Iterator[Session]:
    """A session per request; routes commit explicitly, anything uncommitted is rolled back."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def get_storage(request: Request) -> LocalStorage:
    """The media store of this app."""
    storage: LocalStorage = request.app.state.storage
    return storage


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise AuthError("send your API key as 'Authorization: Bearer <key>'")
    return authorization[7:].strip()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[LocalStorage, Depends(get_storage)]


def _dashboard_session(request: Request) -> WebIdentity | None:
    """The dashboard session of a browser calling the API with its cookie; unsafe methods must also send the
    session's CSRF token in ``X-CSRF-Token`` (the cookie alone would let any site post on the user's behalf)."""
    identity = session_identity(request)
    if identity is None:
        return None
    if request.method not in SAFE_METHODS and not csrf_matches(identity, request.headers.get(CSRF_HEADER)):
        raise ForbiddenError("send the dashboard's CSRF token in the X-CSRF-Token header", code="csrf_failed")
    return identity


def get_tenant(request: Request, session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Tenant:
    """The tenant that owns the presented API key, or the tenant of the browser's dashboard session."""
    if authorization is None:
        identity = _dashboard_session(request)
        if identity is not None and identity.tenant_id is not None:
            tenant = session.get(Tenant, identity.tenant_id)
            if tenant is not None and not tenant.disabled:
                enforce_tenant_limit(request, tenant_id=tenant.id)
                return tenant
    tenant = tenant_for_api_key(session, plaintext=_bearer(authorization))
    if tenant is None:
        enforce_address_limit(request)  # guessing keys costs the caller's address, not a tenant
        raise AuthError("the API key is unknown or revoked")
    enforce_tenant_limit(request, tenant_id=tenant.id)
    return tenant


def require_admin(
    request: Request, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """Admin routes need the deployment's admin token, or an operator's dashboard session."""
    if authorization is None:
        identity = _dashboard_session(request)
        if identity is not None:
            if identity.is_operator:
                return
            raise ForbiddenError("operators only")
    token = _bearer(authorization)
    if not settings.admin_token or not constant_time_equals(token, settings.admin_token):
        raise ForbiddenError("admin token required")


TenantDep = Annotated[Tenant, Depends(get_tenant)]
AdminDep = Annotated[None, Depends(require_admin)]
