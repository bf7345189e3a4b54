"""The write-back task: writes a RUNNING write-back's files off the request.

Delivery is at-least-once and the task is idempotent: files that already have an item in the write-back are not
tried again, and a finished write-back is left as it is.
"""

from __future__ import annotations

import uuid

from celery import shared_task

from orchestrator.db.session import session_scope
from orchestrator.settings import get_settings
from orchestrator.storage import LocalStorage
from orchestrator.tasks.constants import TASK_WRITEBACK
from orchestrator.writeback.run import run_write


@shared_task(name=TASK_WRITEBACK)
def run_writeback(write_id: str) -> str | None:
    """Write tags, people and face regions into copies of the files of one write-back, then finish it."""
    settings = get_settings()
    status = run_write(
        session_scope,
        LocalStorage(settings.media_dir),
        write_id=uuid.UUID(write_id),
        max_pixels=settings.max_image_pixels,
    )
    return None if status is None else str(status)
