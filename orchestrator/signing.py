"""Short-lived signed media URLs: a worker fetches one asset's bytes with no tenant key and no other credential.

A token is ``<asset id hex>.<expiry, unix seconds>.<signature>``, the signature being HMAC-SHA256 over the asset id
and the expiry under a key derived from ``settings.secret_key`` for this use alone. A token therefore opens exactly
one asset until it expires, and changing any part of it breaks the signature. The URL is
``<media base URL>/media/<token>``, served by :mod:`orchestrator.api.routes.media`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Callable
from datetime import datetime

from orchestrator.clock import utcnow
from orchestrator.errors import MediaAnalysisError
from orchestrator.settings import PLACEHOLDER_SECRET, Settings

MEDIA_PATH = "/media"
# Binds the derived key to this purpose: a signature made for media URLs is worth nothing anywhere else.
KEY_PURPOSE = b"ai-media-analysis/media-url/v1"
TOKEN_PATTERN = re.compile(r"^(?P<asset>[0-9a-f]{32})\.(?P<expires>[0-9]{1,12})\.(?P<signature>[A-Za-z0-9_-]{43})$")


class MediaTokenError(MediaAnalysisError):
    """A media token is malformed, forged, or signed for something else."""

    code = "invalid_media_token"


class ExpiredMediaTokenError(MediaTokenError):
    """A genuine media token whose time is up."""

    code = "expired_media_token"


class MediaSigningUnavailableError(MediaAnalysisError):
    """Signed URLs need a real secret key; the placeholder would let anyone forge them."""

    code = "media_signing_unavailable"


class MediaUrlSigner:
    """Signs and verifies media tokens; ``clock`` is injectable so that expiry is tested without sleeping."""

    def __init__(self, secret_key: str, *, base_url: str, ttl_s: float, clock: Callable[[], datetime] = utcnow) -> None:
        if not secret_key or secret_key == PLACEHOLDER_SECRET:
            raise MediaSigningUnavailableError("set ORCH_SECRET_KEY to a real secret to hand workers signed media URLs")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._key = hmac.new(secret_key.encode(), KEY_PURPOSE, hashlib.sha256).digest()
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s
        self._clock = clock

    def token_for(self, asset_id: uuid.UUID) -> str:
        """A token that opens ``asset_id`` for ``ttl_s`` seconds from now."""
        expires = int(self._clock().timestamp() + self.ttl_s)
        payload = f"{asset_id.hex}.{expires}"
        return f"{payload}.{self._sign(payload)}"

    def url_for(self, asset_id: uuid.UUID) -> str:
        """The signed URL of one asset's bytes."""
        return f"{self.base_url}{MEDIA_PATH}/{self.token_for(asset_id)}"

    def verify(self, token: str) -> uuid.UUID:
        """The asset id a genuine, unexpired token opens; raises ``MediaTokenError`` otherwise."""
        match = TOKEN_PATTERN.fullmatch(token)
        if match is None:
            raise MediaTokenError("malformed media token")
        payload = f"{match['asset']}.{match['expires']}"
        if not hmac.compare_digest(self._sign(payload), match["signature"]):
            raise MediaTokenError("the media token's signature is not valid")
        if int(match["expires"]) <= self._clock().timestamp():
            raise ExpiredMediaTokenError("the media URL has expired")
        return uuid.UUID(hex=match["asset"])

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def media_signer(settings: Settings, clock: Callable[[], datetime] = utcnow) -> MediaUrlSigner:
    """The signer of this deployment: its secret key, the base URL workers reach, and the configured lifetime."""
    return MediaUrlSigner(
        settings.secret_key, base_url=settings.media_base_url, ttl_s=settings.media_url_ttl_s, clock=clock
    )
