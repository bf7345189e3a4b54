"""Server-side dashboard sessions (data access, keyword-only).

The browser holds a random token in an HTTP-only cookie; the database holds its sha256, who signed in, the tenant,
the role and the session's CSRF token. A session ends when it is idle too long, when it reaches its maximum age,
when its user is disabled, when the API key it was opened with is revoked, or when the user signs out (the row is
deleted, so a copied cookie stops working at once).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from orchestrator.accounts import Role
from orchestrator.db.models import ApiKey, Tenant, User, WebSession
from orchestrator.security import hash_api_key

SESSION_IDLE = timedelta(hours=12)
SESSION_MAX_AGE = timedelta(days=7)
# last_seen_at is written at most this often, so page views do not each cost a database write.
TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class SignedIn:
    """Who a valid session belongs to."""

    username: str
    role: Role
    tenant_id: uuid.UUID | None
    tenant_name: str | None
    csrf_token: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _open(
    session: Session,
    *,
    now: datetime,
    role: Role,
    label: str,
    tenant_id: uuid.UUID | None,
    user_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
) -> str:
    token = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            token_hash=_digest(token),
            user_id=user_id,
            api_key_id=api_key_id,
            tenant_id=tenant_id,
            role=role.value,
            label=label[:100],
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
            expires_at=now + SESSION_MAX_AGE,
        )
    )
    session.flush()
    return token


def start_for_user(session: Session, *, user: User, now: datetime) -> str:
    """Open a session for an authenticated user; returns the cookie token."""
    return _open(session, now=now, role=Role(user.role), label=user.username, tenant_id=user.tenant_id, user_id=user.id)


def start_for_api_key(session: Session, *, plaintext: str, now: datetime) -> str | None:
    """Open a member session with a tenant's API key; None when the key is unknown, revoked or its tenant disabled."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(plaintext.strip())))
    if key is None or key.revoked_at is not None or key.tenant.disabled:
        return None
    label = f"API key {key.prefix}" + (f" ({key.name})" if key.name else "")
    return _open(session, now=now, role=Role.MEMBER, label=label, tenant_id=key.tenant_id, api_key_id=key.id)


def start_for_admin(session: Session, *, now: datetime) -> str:
    """Open an operator session for someone who presented the deployment's admin token (checked by the caller)."""
    return _open(session, now=now, role=Role.OPERATOR, label="admin", tenant_id=None)


def resolve(session: Session, *, token: str, now: datetime) -> SignedIn | None:
    """The signed-in identity of a cookie token, or None when the session is unknown, expired or revoked."""
    row = session.get(WebSession, _digest(token))
    if row is None:
        return None
    if now >= row.expires_at or now - row.last_seen_at >= SESSION_IDLE:
        session.delete(row)
        return None
    username = row.label
    if row.user_id is not None:
        user = session.get(User, row.user_id)
        if user is None or user.disabled:
            return None
        username = user.username
    if row.api_key_id is not None:
        key = session.get(ApiKey, row.api_key_id)
        if key is None or key.revoked_at is not None:
            return None
    tenant_name = None
    if row.tenant_id is not None:
        tenant = session.get(Tenant, row.tenant_id)
        if tenant is None or tenant.disabled:
            return None
        tenant_name = tenant.name
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
    return SignedIn(
        username=username,
        role=Role(row.role),
        tenant_id=row.tenant_id,
        tenant_name=tenant_name,
        csrf_token=row.csrf_token,
    )


def end(session: Session, *, token: str) -> None:
    """Sign out: delete the session so that its cookie is worthless from now on."""
    session.execute(delete(WebSession).where(WebSession.token_hash == _digest(token)))


def end_all_for_user(session: Session, *, user_id: uuid.UUID) -> int:
    """End every session of a user (password change, disabling); returns how many ended."""
    result = session.execute(delete(WebSession).where(WebSession.user_id == user_id))
    return int(getattr(result, "rowcount", 0) or 0)


def purge_expired(session: Session, *, now: datetime) -> int:
    """Delete sessions past their maximum age or idle limit; returns how many."""
    result = session.execute(
        delete(WebSession).where((WebSession.expires_at <= now) | (WebSession.last_seen_at <= now - SESSION_IDLE))
    )
    return int(getattr(result, "rowcount", 0) or 0)
