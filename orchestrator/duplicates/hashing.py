"""Perceptual hashes of stored assets: when an asset is prepared, and a backfill for assets that have none.

Both hash the asset's thumbnail (the decoded picture, or a video's first frame, oriented and scaled to 320 px), so
an asset hashes the same whether it was hashed at upload or later, and no original is decoded twice. Scaling to
320 px loses nothing the hash uses: it reduces the picture to 32x32 anyway. Audio has no picture and no hash.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpu_worker.contract import MediaKind
from orchestrator.db.models import Asset
from orchestrator.duplicates.phash import PerceptualHashError, phash_bytes
from orchestrator.enums import AssetStatus
from orchestrator.storage import LocalStorage

log = logging.getLogger(__name__)

BACKFILL_CHUNK = 500
PICTURE_KINDS = (MediaKind.IMAGE.value, MediaKind.VIDEO.value)


def thumbnail_phash(thumbnail_jpeg: bytes | None) -> str | None:
    """The perceptual hash of a thumbnail, or None when there is none or it does not decode."""
    if thumbnail_jpeg is None:
        return None
    try:
        return phash_bytes(thumbnail_jpeg)
    except PerceptualHashError as exc:
        log.info("no perceptual hash: %s", exc)
        return None


@dataclass(frozen=True)
class BackfillReport:
    """What a backfill did: assets hashed, and those whose thumbnail could not be read (left without a hash)."""

    hashed: int
    unreadable: int


def backfill_phashes(
    session: Session, *, storage: LocalStorage, tenant_id: uuid.UUID | None = None, limit: int | None = None
) -> BackfillReport:
    """Hash the pictures and videos (of one tenant, or all) that have a thumbnail but no perceptual hash yet.

    Runs in the caller's transaction, in chunks of ``BACKFILL_CHUNK`` rows; running it again finds only what is
    still missing, so it is safe to repeat or interrupt.
    """
    hashed = unreadable = 0
    skip: set[uuid.UUID] = set()
    while limit is None or hashed + unreadable < limit:
        query = select(Asset).where(
            Asset.phash.is_(None),
            Asset.thumbnail_key.is_not(None),
            Asset.media_kind.in_(PICTURE_KINDS),
            Asset.status != AssetStatus.FAILED,
        )
        if tenant_id is not None:
            query = query.where(Asset.tenant_id == tenant_id)
        if skip:
            query = query.where(Asset.id.not_in(skip))
        chunk = BACKFILL_CHUNK if limit is None else min(BACKFILL_CHUNK, limit - hashed - unreadable)
        assets = list(session.scalars(query.order_by(Asset.id).limit(chunk)))
        if not assets:
            break
        for asset in assets:
            assert asset.thumbnail_key is not None
            try:
                data = storage.path_for(asset.thumbnail_key).read_bytes()
            except OSError as exc:
                log.info("asset %s: thumbnail unreadable: %s", asset.id, exc)
                data = None
            value = thumbnail_phash(data)
            if value is None:
                unreadable += 1
                skip.add(asset.id)
            else:
                asset.phash = value
                hashed += 1
        session.flush()
    return BackfillReport(hashed=hashed, unreadable=unreadable)
