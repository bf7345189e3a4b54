"""Errors of standalone tagging, under the worker's one hierarchy (:class:`gpu_worker.errors.WorkerError`)."""

from __future__ import annotations

from gpu_worker.errors import WorkerError


class TaggingError(WorkerError):
    """Base of the tagging errors."""

    code = "tagging_failed"


class TaggingSetupError(TaggingError):
    """Nothing can run: the folder, exiftool, the checkpoint or every analyzer is missing; ``message`` says why."""

    code = "tagging_setup"


class ExifToolMissingError(TaggingSetupError):
    """No exiftool executable was found; ``message`` says how to install it."""

    code = "exiftool_missing"


class ExifToolError(TaggingError):
    """An exiftool command failed or did not answer in time; the file it worked on is left as it was."""

    code = "exiftool_failed"


class UnsafeArgumentError(ExifToolError):
    """A file name or value cannot be handed to exiftool without being altered (e.g. a line break with ``$``)."""

    code = "unsafe_argument"


class WriteVerificationError(TaggingError):
    """A written copy did not read back as expected; it was discarded and the original kept."""

    code = "write_verification_failed"
