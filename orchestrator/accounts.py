"""Dashboard users: scrypt password verifiers, roles, and sign-in checks (data access, keyword-only).

A password is stored as ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (base64url), so the cost can be raised later without
invalidating old verifiers. An unknown username costs the same scrypt work as a wrong password, so timing does not
tell which usernames exist.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.clock import utcnow
from orchestrator.db.models import Tenant, User
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.security import constant_time_equals

# About 50 ms and 16 MiB per verification on one core: slow for guessing, fine for signing in.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024
USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-@")


class Role(StrEnum):
    """What a dashboard user may do: members work in their tenant; operators manage tenants and see all spend."""

    MEMBER = "member"
    OPERATOR = "operator"


class InvalidAccountError(ConflictError):
    """A username, password or role that cannot be accepted."""

    code = "invalid_account"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=KEY_BYTES)


def hash_password(password: str) -> str:
    """A new verifier for ``password`` with a random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, verifier: str) -> bool:
    """Whether ``password`` matches ``verifier``; a malformed verifier never matches."""
    try:
        scheme, n, r, p, salt, digest = verifier.split("$")
        if scheme != "scrypt":
            return False
        computed = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return constant_time_equals(_b64(computed), digest)


_DUMMY_VERIFIER = hash_password(secrets.token_urlsafe(16))


def normalise_username(username: str) -> str:
    """Usernames are case-insensitive and stored lower-case."""
    return username.strip().lower()


def validate_new_password(password: str) -> None:
    """Refuse passwords that are too short or absurdly long, with a message that says so."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidAccountError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidAccountError(f"the password must have at most {MAX_PASSWORD_CHARS} characters")


def create_user(
    session: Session, *, username: str, password: str, role: Role | str = Role.MEMBER, tenant_id: uuid.UUID | None
) -> User:
    """Create a dashboard user. Members need a tenant; an operator's tenant is optional."""
    name = normalise_username(username)
    if not 1 <= len(name) <= 100 or not set(name) <= USERNAME_CHARS:
        raise InvalidAccountError("a username has 1-100 characters: letters, digits and . _ - @")
    try:
        chosen = Role(role)
    except ValueError as exc:
        raise InvalidAccountError(f"role must be one of: {', '.join(r.value for r in Role)}") from exc
    if chosen is Role.MEMBER and tenant_id is None:
        raise InvalidAccountError("a member must belong to a tenant")
    if tenant_id is not None and session.get(Tenant, tenant_id) is None:
        raise NotFoundError("tenant not found")
    validate_new_password(password)
    if session.scalar(select(User).where(User.username == name)) is not None:
        raise ConflictError(f"user {name!r} already exists", code="user_exists")
    user = User(username=name, password_hash=hash_password(password), role=chosen.value, tenant_id=tenant_id)
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, *, username: str, password: str) -> User | None:
    """The enabled user with this username and password, or None (the same work either way)."""
    user = session.scalar(select(User).where(User.username == normalise_username(username)))
    if user is None:
        verify_password(password, _DUMMY_VERIFIER)
        return None
    if not verify_password(password, user.password_hash) or user.disabled:
        return None
    if user.tenant_id is not None:
        tenant = session.get(Tenant, user.tenant_id)
        if tenant is None or tenant.disabled:
            return None
    user.last_login_at = utcnow()
    return user


def set_password(session: Session, *, username: str, password: str) -> User:
    """Replace a user's password."""
    user = get_user(session, username=username)
    validate_new_password(password)
    user.password_hash = hash_password(password)
    return user


def get_user(session: Session, *, username: str) -> User:
    """The user called ``username``."""
    user = session.scalar(select(User).where(User.username == normalise_username(username)))
    if user is None:
        raise NotFoundError("user not found")
    return user


def list_users(session: Session, *, tenant_id: uuid.UUID | None = None) -> list[User]:
    """Users, oldest first; only one tenant's when ``tenant_id`` is given."""
    query = select(User).order_by(User.created_at)
    if tenant_id is not None:
        query = query.where(User.tenant_id == tenant_id)
    return list(session.scalars(query))


def set_disabled(session: Session, *, username: str, disabled: bool) -> User:
    """Disable (or enable again) a user; a disabled user's sessions stop working at once."""
    user = get_user(session, username=username)
    user.disabled = disabled
    return user
