"""One error hierarchy for the worker; errors that reach a batch result carry a stable machine-readable code."""

from __future__ import annotations

from enum import StrEnum


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""

    code = "worker_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def summary(self) -> str:
        """One line for people reading a job's notices; the full ``message`` goes to the logs."""
        return self.message.splitlines()[0] if self.message else self.code


class ModelUnavailableError(WorkerError):
    """A model's weights cannot be had here; ``message`` tells the user how to provide them, ``summary`` in one
    line."""

    code = "model_unavailable"

    def __init__(self, model_id: str, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        self.model_id = model_id
        self._summary = summary

    @property
    def summary(self) -> str:
        """One line naming the missing weights and the command that provides them."""
        return self._summary or super().summary


class UnknownModelError(ModelUnavailableError):
    """The model id is not in any catalog."""

    code = "unknown_model"


class ModelLoadError(WorkerError):
    """Verified weights could not be loaded, even after clearing the cache and fetching them again."""

    code = "model_load_failed"

    def __init__(self, model_id: str, message: str) -> None:
        super().__init__(message)
        self.model_id = model_id


class ChecksumMismatchError(WorkerError):
    """A file's sha256 differs from the catalog's (or the one recorded at its first download)."""

    code = "checksum_mismatch"

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(f"{name}: sha256 is {actual}, expected {expected}")
        self.name = name
        self.expected = expected
        self.actual = actual


class DecodeErrorCode(StrEnum):
    """Why one item could not be turned into pixels or frames."""

    EMPTY_FILE = "empty_file"
    NOT_MEDIA = "not_media"
    TRUNCATED = "truncated"
    DECODE_FAILED = "decode_failed"
    IMAGE_TOO_LARGE = "image_too_large"
    DECOMPRESSION_BOMB = "decompression_bomb"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DOWNLOAD_FAILED = "download_failed"
    CHECKSUM_MISMATCH = "checksum_mismatch"


class DecodeError(WorkerError):
    """One item could not be decoded; ``code`` is stable and goes into the item's error."""

    def __init__(self, code: DecodeErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = str(code)
