"""The contract every batch backend implements."""

from __future__ import annotations

from typing import Protocol

from gpu_worker.contract import BatchManifest, BatchResult
from orchestrator.enums import Backend


class BatchBackend(Protocol):
    """Executes one batch.

    ``execute`` returns per-item results or per-item errors; it raises
    :class:`~orchestrator.errors.BackendUnavailableError` only when the backend itself could not run the batch
    (then the batch goes to the next backend or back to the queue, never dropped).
    """

    kind: Backend

    def execute(self, manifest: BatchManifest) -> BatchResult:
        """Run the manifest's analyzers on its items."""
        ...
