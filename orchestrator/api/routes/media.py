"""Signed media URLs: a worker fetches one asset's bytes with the token it was handed, and nothing else.

No tenant key is involved: the token itself is the capability (see :mod:`orchestrator.signing`). A forged, altered or
expired token is answered 403 before any database lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from orchestrator.api.deps import ForbiddenError, SessionDep, SettingsDep, StorageDep
from orchestrator.api.error_responses import error_responses
from orchestrator.db.models import Asset
from orchestrator.errors import NotFoundError
from orchestrator.signing import MEDIA_PATH, MediaSigningUnavailableError, MediaUrlSigner, media_signer

# A forged, altered or expired token answers 403; an asset without stored bytes, 404.
router = APIRouter(prefix=MEDIA_PATH, tags=["media"], responses=error_responses(403, 404, 422))


def get_signer(settings: SettingsDep) -> MediaUrlSigner:
    """The deployment's media URL signer; without a real secret key no media URL is valid."""
    try:
        return media_signer(settings)
    except MediaSigningUnavailableError as exc:
        raise ForbiddenError(exc.message, code=exc.code) from exc


SignerDep = Annotated[MediaUrlSigner, Depends(get_signer)]


@router.get("/{token}", response_class=StreamingResponse)
def get_media(token: str, session: SessionDep, storage: StorageDep, signer: SignerDep) -> StreamingResponse:
    """The original bytes of the asset the token was signed for, while the token is valid."""
    asset_id = signer.verify(token)
    asset = session.get(Asset, asset_id)
    if asset is None or asset.storage_key is None or not storage.exists(asset.storage_key):
        raise NotFoundError("this asset has no stored file")
    return StreamingResponse(
        storage.iter_bytes(asset.storage_key),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(asset.size_bytes),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
