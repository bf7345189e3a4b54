"""One error hierarchy for the orchestrator; every API-visible error carries a stable machine-readable code."""

from __future__ import annotations


class MediaAnalysisError(Exception):
    """Base of every error this system raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFoundError(MediaAnalysisError):
    """The object does not exist for this caller (another tenant's objects are reported the same way)."""

    code = "not_found"


class ConflictError(MediaAnalysisError):
    """The request contradicts the object's state (for example, uploading into a sealed job)."""

    code = "conflict"


class UploadRejectedError(MediaAnalysisError):
    """One uploaded file was refused; the rest of the upload goes on."""

    code = "upload_rejected"


class ProviderError(MediaAnalysisError):
    """A GPU capacity provider failed."""

    code = "provider_error"


class NoCapacityError(ProviderError):
    """No offer matched the request."""

    code = "no_capacity"


class ProvisioningError(ProviderError):
    """An instance could not be brought to a usable state."""

    code = "provisioning_failed"


class BudgetExceededError(MediaAnalysisError):
    """Spending would cross a tenant's cap."""

    code = "budget_exceeded"


class BackendUnavailableError(MediaAnalysisError):
    """A backend could not execute a batch; the batch goes to the next backend or back to the queue."""

    code = "backend_unavailable"
