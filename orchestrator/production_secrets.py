"""Which secrets a production process refuses to start with: placeholders, short keys, and URLs whose password is a
placeholder or left empty. A pure decision over names and values; :mod:`orchestrator.settings` raises on its answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

# deploy/env.example ships these; an unedited copy must not run.
PLACEHOLDER_MARKERS = ("change-me", "changeme")


def is_placeholder(value: str) -> bool:
    """True when ``value`` still carries a placeholder marker (any case)."""
    lowered = value.lower()
    return any(marker in lowered for marker in PLACEHOLDER_MARKERS)


def url_password_refusal(name: str, url: str) -> str | None:
    """Why the password inside connection URL ``url`` (variable ``name``) is unusable, or None.

    A URL without a password (trust or peer authentication, a socket, SQLite) is accepted; a password that is present
    but empty (``user:@host``, what an unset variable leaves) or a placeholder is refused. The password itself is never
    part of the answer.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return None  # not a URL this check can read; the driver reports it with its own words
    if "@" not in parts.netloc:
        return None
    userinfo = parts.netloc.rsplit("@", 1)[0]
    if ":" not in userinfo:
        return None
    password = unquote(userinfo.split(":", 1)[1])
    if not password:
        return f"{name}: the password in the URL is empty"
    if is_placeholder(password):
        return f"{name}: the password in the URL is a placeholder"
    return None


def production_refusals(
    *,
    required_secrets: Mapping[str, str],
    optional_secrets: Mapping[str, str],
    urls: Mapping[str, str],
    min_secret_chars: int,
) -> list[str]:
    """Every reason, one per variable, why these values must not run in production (empty when they may).

    ``required_secrets`` must be real secrets of at least ``min_secret_chars`` characters; ``optional_secrets`` may be
    empty (the feature is off) but never a placeholder; ``urls`` are connection URLs checked by
    :func:`url_password_refusal`. Keys are the environment variable names the operator sets.
    """
    refusals: list[str] = []
    for name, value in required_secrets.items():
        if is_placeholder(value) or len(value) < min_secret_chars:
            refusals.append(f"{name} must be a real secret of at least {min_secret_chars} characters in production")
    for name, value in optional_secrets.items():
        if is_placeholder(value):
            refusals.append(f"{name} is a placeholder: set the real value, or leave it empty to turn the feature off")
    for name, url in urls.items():
        refusal = url_password_refusal(name, url)
        if refusal is not None:
            refusals.append(refusal)
    return refusals
