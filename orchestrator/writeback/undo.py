"""Undo a whole write-back: every file it wrote that is still current goes back to its previous stored copy, and the
written copies nothing else uses are deleted. Exact, because the previous bytes were never modified.

All or nothing: if one of its files was written again by a later write-back, nothing is undone and the message
names the later write-back to undo first. Undoing an undone write-back changes nothing.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, MetadataWrite, MetadataWriteItem
from orchestrator.storage import LocalStorage
from orchestrator.writeback.apply import is_written_key
from orchestrator.writeback.records import get_write
from orchestrator.writeback.states import ItemStatus, UndoRefusedError, WriteStatus


def undo_write(session: Session, *, tenant_id: uuid.UUID, write_id: uuid.UUID) -> tuple[MetadataWrite, list[str]]:
    """Point the write-back's files back at their previous copies and mark it UNDONE; returns it and the keys of the
    copies to delete once the caller has committed (see :func:`delete_unreferenced`)."""
    write = get_write(session, tenant_id=tenant_id, write_id=write_id, for_update=True)
    if write.status == WriteStatus.UNDONE:
        return write, []
    if write.status == WriteStatus.RUNNING:
        raise UndoRefusedError("the write-back is still running; undo it once it has finished")
    items = list(
        session.scalars(
            select(MetadataWriteItem).where(
                MetadataWriteItem.write_id == write_id, MetadataWriteItem.status == ItemStatus.WRITTEN
            )
        )
    )
    for item in items:
        asset = session.get(Asset, item.asset_id)
        if asset is not None and asset.storage_key != item.new_storage_key:
            later = session.scalar(
                select(MetadataWriteItem.write_id).where(
                    MetadataWriteItem.asset_id == item.asset_id,
                    MetadataWriteItem.previous_storage_key == item.new_storage_key,
                    MetadataWriteItem.status == ItemStatus.WRITTEN,
                )
            )
            later_text = f"write-back {later}" if later is not None else "a later write-back"
            raise UndoRefusedError(
                f"{asset.original_name or 'a file'} was written again by {later_text}; undo that one first"
            )
    released: list[str] = []
    for item in items:
        session.execute(
            update(Asset)
            .where(Asset.id == item.asset_id, Asset.storage_key == item.new_storage_key)
            .values(storage_key=item.previous_storage_key, size_bytes=item.previous_size_bytes, updated_at=utcnow())
            .execution_options(synchronize_session="fetch")
        )
        item.status = ItemStatus.UNDONE
        if item.new_storage_key is not None:
            released.append(item.new_storage_key)
    write.status = WriteStatus.UNDONE
    write.undone_at = utcnow()
    session.flush()
    return write, released


def delete_unreferenced(session: Session, storage: LocalStorage, keys: list[str]) -> int:
    """Delete written copies that no asset points at and no write-back still needs to undo to; returns how many."""
    deleted = 0
    for key in dict.fromkeys(keys):
        if not is_written_key(key):
            continue
        in_use = session.scalar(select(Asset.id).where(Asset.storage_key == key).limit(1)) is not None
        needed = (
            session.scalar(
                select(MetadataWriteItem.id)
                .where(MetadataWriteItem.previous_storage_key == key, MetadataWriteItem.status == ItemStatus.WRITTEN)
                .limit(1)
            )
            is not None
        )
        if not in_use and not needed:
            storage.delete(key)
            deleted += 1
    return deleted
