"""Tenants and their API keys (data access, keyword-only)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.clock import utcnow
from orchestrator.db.models import ApiKey, Tenant
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.security import generate_api_key, hash_api_key


def create_tenant(session: Session, *, name: str) -> Tenant:
    """Create a tenant; names are unique."""
    name = name.strip()
    if not name:
        raise ConflictError("tenant name must not be empty", code="invalid_name")
    if get_tenant_by_name(session, name=name) is not None:
        raise ConflictError(f"tenant {name!r} already exists", code="tenant_exists")
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant_by_name(session: Session, *, name: str) -> Tenant | None:
    """The tenant called ``name``, if any."""
    return session.scalar(select(Tenant).where(Tenant.name == name))


def list_tenants(session: Session) -> list[Tenant]:
    """All tenants, oldest first."""
    return list(session.scalars(select(Tenant).order_by(Tenant.created_at)))


def issue_api_key(session: Session, *, tenant_id: uuid.UUID, name: str = "") -> tuple[ApiKey, str]:
    """Issue a key for a tenant. Returns the row and the plaintext key, which is never stored and never shown again."""
    if session.get(Tenant, tenant_id) is None:
        raise NotFoundError("tenant not found")
    plaintext, prefix, digest = generate_api_key()
    key = ApiKey(tenant_id=tenant_id, name=name, prefix=prefix, key_hash=digest)
    session.add(key)
    session.flush()
    return key, plaintext


def revoke_api_key(session: Session, *, key_id: uuid.UUID) -> None:
    """Revoke a key; it stops working at once."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError("API key not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()


def tenant_for_api_key(session: Session, *, plaintext: str) -> Tenant | None:
    """The active tenant that owns an unrevoked key, or None."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(plaintext)))
    if key is None or key.revoked_at is not None or key.tenant.disabled:
        return None
    return key.tenant
