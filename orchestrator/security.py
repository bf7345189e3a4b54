"""API keys: generated with enough entropy that a plain sha256 is a safe verifier; compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "mak"
PREFIX_CHARS = 8


def generate_api_key() -> tuple[str, str, str]:
    """A new key as (plaintext, lookup prefix, sha256 hex). Only the prefix and hash are stored."""
    prefix = secrets.token_hex(PREFIX_CHARS // 2)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hash_api_key(key)


def hash_api_key(key: str) -> str:
    """The stored verifier of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def constant_time_equals(a: str, b: str) -> bool:
    """Compare secrets without leaking their common prefix length through timing."""
    return hmac.compare_digest(a.encode(), b.encode())


def generate_token() -> str:
    """A random bearer token for admins and per-instance credentials."""
    return secrets.token_urlsafe(32)
