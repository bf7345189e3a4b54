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


class CreateFailedError(ProvisioningError):
    """A create call failed; ``instance_id`` is set when the provider still answered with a contract.

    An instance id here means something may be billing: destroy it at once. ``instance_id`` is None when nothing was
    rented or the outcome is unknown (a timeout after sending); a labelled instance is then found by the reconciler.
    """

    code = "create_failed"

    def __init__(self, message: str, *, instance_id: str | None = None) -> None:
        super().__init__(message)
        self.instance_id = instance_id


class OfferGoneError(ProviderError):
    """The offer was taken or withdrawn between search and create: try the next offer."""

    code = "offer_gone"


class RateLimitedError(ProviderError):
    """The provider kept answering 429 after our bounded retries; ``retry_after_s`` is its last hint, if any."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ProviderUnavailableError(ProviderError):
    """The provider could not be reached or kept failing (5xx, timeouts); nothing can be concluded from it."""

    code = "provider_unavailable"


class ProviderAuthError(ProviderError):
    """The provider refused our credentials (401/403)."""

    code = "provider_auth"


class NotYetTerminatedError(ProviderError):
    """A destroy was accepted but the instance is still listed; check again on the next pass."""

    code = "not_yet_terminated"


class BudgetExceededError(MediaAnalysisError):
    """Spending would cross a tenant's cap."""

    code = "budget_exceeded"


class BackendUnavailableError(MediaAnalysisError):
    """A backend could not execute a batch; the batch goes to the next backend or back to the queue."""

    code = "backend_unavailable"
