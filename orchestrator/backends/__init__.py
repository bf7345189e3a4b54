"""How one batch gets executed: a rented cloud instance, a local GPU worker, or in-process on this machine's CPU.

Every backend honours the same contract (:class:`~orchestrator.backends.base.BatchBackend`): a
:class:`~gpu_worker.contract.BatchManifest` in, a :class:`~gpu_worker.contract.BatchResult` out.
"""
