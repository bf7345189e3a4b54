"""Assets: the tenant's assets page by page with filters, one asset's results, its original bytes (inline, with
HTTP Range for seeking players, or as a download) and its thumbnail."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, StreamingResponse

from gpu_worker.contract import MediaKind
from orchestrator.api.deps import SessionDep, StorageDep, TenantDep
from orchestrator.api.error_responses import TENANT_ERRORS, error_responses
from orchestrator.api.presenters import assets_public, gallery_public
from orchestrator.api.schemas import AssetPublic, GalleryPublic
from orchestrator.db.models import Asset
from orchestrator.enums import AssetStatus
from orchestrator.errors import NotFoundError
from orchestrator.gallery import MAX_PAGE_SIZE, PAGE_SIZE, GalleryFilterError, GalleryFilters, check_tag, gallery_page
from orchestrator.jobs import get_asset
from orchestrator.storage import LocalStorage

router = APIRouter(prefix="/assets", tags=["assets"], responses=TENANT_ERRORS)
NOT_FOUND = error_responses(404)

# Uploads are sniffed to these kinds; anything else (never expected) is served as opaque bytes, never rendered.
INLINE_MEDIA_PREFIXES = ("image/", "video/", "audio/")
NEVER_INLINE = frozenset({"image/svg+xml"})


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("query", field), "msg": message, "type": "value_error"}])


@router.get("")
def list_assets_page(
    session: SessionDep,
    tenant: TenantDep,
    tag: Annotated[str | None, Query(max_length=200, description="a tag (animal/cat) or a prefix (animal/*)")] = None,
    kind: MediaKind | None = None,
    asset_status: Annotated[AssetStatus | None, Query(alias="status")] = None,
    created_from: Annotated[date | None, Query(alias="from", description="first UTC day, included")] = None,
    created_to: Annotated[date | None, Query(alias="to", description="last UTC day, included")] = None,
    job: uuid.UUID | None = None,
    cursor: Annotated[str | None, Query(max_length=80)] = None,
    direction: Literal["older", "newer"] = "older",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
) -> GalleryPublic:
    """The tenant's assets, newest first, filtered by tag, media kind, status, creation day and job.

    Pages are keyset-paginated: pass ``older`` from an answer as ``cursor`` for the next page, or ``newer`` with
    ``direction=newer`` for the previous one.
    """
    try:
        filters = GalleryFilters(
            tag=check_tag(tag),
            kind=kind,
            status=asset_status,
            created_from=created_from,
            created_to=created_to,
            job_id=job,
        )
        if created_from and created_to and created_from > created_to:
            raise GalleryFilterError("'to' is before 'from'", field="to")
        page = gallery_page(
            session, tenant_id=tenant.id, filters=filters, cursor=cursor, direction=direction, limit=limit
        )
    except GalleryFilterError as exc:
        raise _invalid(exc.field, exc.message) from exc
    return gallery_public(page)


@router.get("/{asset_id}", responses=NOT_FOUND)
def get_asset_detail(asset_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> AssetPublic:
    """An asset with its tags and full results."""
    return assets_public(session, [get_asset(session, tenant_id=tenant.id, asset_id=asset_id)])[0]


def _stored(asset: Asset, storage: LocalStorage) -> str:
    if asset.storage_key is None or not storage.exists(asset.storage_key):
        raise NotFoundError("this asset has no stored file (it was rejected at upload)")
    return asset.storage_key


def inline_media_type(mime_type: str | None) -> str:
    """The type an asset is served inline with: its sniffed image, video or audio type; anything else as bytes."""
    mime = (mime_type or "").lower()
    if mime.startswith(INLINE_MEDIA_PREFIXES) and mime not in NEVER_INLINE:
        return mime
    return "application/octet-stream"


@router.get(
    "/{asset_id}/original",
    response_class=FileResponse,
    responses={
        **NOT_FOUND,
        206: {"description": "the requested byte range (``Range``), with ``Content-Range``"},
        304: {"description": "not modified since the ``ETag`` or date the browser holds"},
        416: {"description": "the requested range lies outside the file"},
    },
)
def asset_original(asset_id: uuid.UUID, session: SessionDep, tenant: TenantDep, storage: StorageDep) -> FileResponse:
    """The original bytes for display (an <img>, <video> or <audio> element): inline, with its sniffed media type,
    and HTTP Range requests (206 with Content-Range; 416 for a range outside the file) so a player can seek."""
    asset = get_asset(session, tenant_id=tenant.id, asset_id=asset_id)
    key = _stored(asset, storage)
    return FileResponse(
        storage.path_for(key),
        media_type=inline_media_type(asset.mime_type),
        filename=asset.original_name,
        content_disposition_type="inline",
        # A write-back (or its undo) points the asset at other bytes, so the browser revalidates (FileResponse sends
        # an ETag and Last-Modified of the stored file, and answers 304 when they still match).
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-cache"},
    )


@router.get("/{asset_id}/download", response_class=StreamingResponse, responses=NOT_FOUND)
def download_asset(
    asset_id: uuid.UUID, session: SessionDep, tenant: TenantDep, storage: StorageDep
) -> StreamingResponse:
    """The original bytes, as uploaded."""
    asset = get_asset(session, tenant_id=tenant.id, asset_id=asset_id)
    key = _stored(asset, storage)
    # The name is sanitized at upload; percent-encode it for the header (RFC 6266), never use it as a path.
    filename = quote(asset.original_name, safe="")
    return StreamingResponse(
        storage.iter_bytes(key),
        media_type=asset.mime_type or "application/octet-stream",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{filename}",
            "Content-Length": str(asset.size_bytes),
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/{asset_id}/thumbnail", response_class=StreamingResponse, responses=NOT_FOUND)
def asset_thumbnail(
    asset_id: uuid.UUID, session: SessionDep, tenant: TenantDep, storage: StorageDep
) -> StreamingResponse:
    """A JPEG preview at most 320 px on its longer side."""
    asset = get_asset(session, tenant_id=tenant.id, asset_id=asset_id)
    if asset.thumbnail_key is None or not storage.exists(asset.thumbnail_key):
        raise NotFoundError("no thumbnail for this asset")
    return StreamingResponse(storage.iter_bytes(asset.thumbnail_key), media_type="image/jpeg")
