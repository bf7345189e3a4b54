"""The states of a write-back and of each file in it, and its errors."""

from __future__ import annotations

from enum import StrEnum

from orchestrator.errors import ConflictError, MediaAnalysisError


class WriteStatus(StrEnum):
    """A write-back is RUNNING until every file was tried, then DONE (some files may have failed alone) or FAILED
    (nothing could run, e.g. exiftool is missing); UNDONE once its files were put back."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    UNDONE = "undone"


class ItemStatus(StrEnum):
    """One file: WRITTEN (a new stored copy is current), UNCHANGED (it already held everything), SKIPPED (nothing to
    write, or a format that holds no XMP), FAILED (with its reason), UNDONE (the previous copy is current again)."""

    WRITTEN = "written"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    FAILED = "failed"
    UNDONE = "undone"


class WriteFailedError(MediaAnalysisError):
    """One file could not be written or did not read back as planned; it is left as it was."""

    code = "writeback_failed"


class UndoRefusedError(ConflictError):
    """A write-back cannot be undone now (still running, or a file was written again later)."""

    code = "undo_refused"


class WritebackScopeError(ConflictError):
    """The files asked for cannot be written now (for example, their job is still being analyzed)."""

    code = "writeback_not_ready"
