"""Assets: one asset's results, its original bytes and its thumbnail."""

from __future__ import annotations

import uuid
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from orchestrator.api.deps import SessionDep, StorageDep, TenantDep
from orchestrator.api.presenters import assets_public
from orchestrator.api.schemas import AssetPublic
from orchestrator.errors import NotFoundError
from orchestrator.jobs import get_asset

router = APIRouter(prefix="/assets", tags=["assets"])


@router.get("/{asset_id}")
def get_asset_detail(asset_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> AssetPublic:
    """An asset with its tags and full results."""
    return assets_public(session, [get_asset(session, tenant_id=tenant.id, asset_id=asset_id)])[0]


@router.get("/{asset_id}/download", response_class=StreamingResponse)
def download_asset(
    asset_id: uuid.UUID, session: SessionDep, tenant: TenantDep, storage: StorageDep
) -> StreamingResponse:
    """The original bytes, as uploaded."""
    asset = get_asset(session, tenant_id=tenant.id, asset_id=asset_id)
    if asset.storage_key is None or not storage.exists(asset.storage_key):
        raise NotFoundError("this asset has no stored file (it was rejected at upload)")
    # The name is sanitized at upload; percent-encode it for the header (RFC 6266), never use it as a path.
    filename = quote(asset.original_name, safe="")
    return StreamingResponse(
        storage.iter_bytes(asset.storage_key),
        media_type=asset.mime_type or "application/octet-stream",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{filename}",
            "Content-Length": str(asset.size_bytes),
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/{asset_id}/thumbnail", response_class=StreamingResponse)
def asset_thumbnail(
    asset_id: uuid.UUID, session: SessionDep, tenant: TenantDep, storage: StorageDep
) -> StreamingResponse:
    """A JPEG preview at most 320 px on its longer side."""
    asset = get_asset(session, tenant_id=tenant.id, asset_id=asset_id)
    if asset.thumbnail_key is None or not storage.exists(asset.thumbnail_key):
        raise NotFoundError("no thumbnail for this asset")
    return StreamingResponse(storage.iter_bytes(asset.thumbnail_key), media_type="image/jpeg")
