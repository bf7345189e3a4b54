"""The last-resort backend: the inference worker imported into this process, on CUDA if present, else the CPU."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from gpu_worker.contract import BatchManifest, BatchResult
from orchestrator.enums import Backend
from orchestrator.errors import BackendUnavailableError

if TYPE_CHECKING:
    from gpu_worker.executor import InProcessExecutor

_executor: InProcessExecutor | None = None
_executor_lock = threading.Lock()


def _get_executor() -> InProcessExecutor:
    """Import the inference stack only when a batch actually runs here, and keep its loaded models warm."""
    global _executor
    with _executor_lock:
        if _executor is None:
            try:
                from gpu_worker.executor import InProcessExecutor
            except ImportError as exc:
                raise BackendUnavailableError(
                    f"the in-process worker needs the inference stack: pip install 'ai-media-analysis[worker]' ({exc})"
                ) from exc
            _executor = InProcessExecutor()
        return _executor


class InProcessBackend:
    """Runs batches through :class:`gpu_worker.executor.InProcessExecutor` in this process."""

    kind = Backend.IN_PROCESS

    def execute(self, manifest: BatchManifest) -> BatchResult:
        """Run the manifest in-process; raises BackendUnavailableError if the inference stack is missing."""
        result: BatchResult = _get_executor().run(manifest)
        return result
