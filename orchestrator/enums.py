"""Closed vocabularies shared by the database, the API and the tasks."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A job is OPEN while files arrive, QUEUED once sealed, RUNNING while batches execute, then DONE."""

    OPEN = "open"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


class AssetStatus(StrEnum):
    """Life of one file: stored, prepared (probed, thumbnailed), analyzing, then done or failed."""

    UPLOADED = "uploaded"
    PREPARED = "prepared"
    ANALYZING = "analyzing"
    DONE = "done"
    FAILED = "failed"


class BatchStatus(StrEnum):
    """A batch is PENDING until a worker claims it with a lease; RUNNING under that lease; then DONE or FAILED."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Backend(StrEnum):
    """Where a batch executes."""

    CLOUD = "cloud"
    LOCAL = "local"
    IN_PROCESS = "in_process"


class InstanceStatus(StrEnum):
    """The orchestrator's lifecycle of one rented-instance row (the provider's view is ``InstanceState``).

    REQUESTED: row and reservation written, create not yet confirmed. BOOTING: the provider made a contract; the
    worker is not healthy yet. READY: /healthz answered with the expected models. FAILED: broken (set by the backend
    or the actuator), to be destroyed. DESTROYING: a destroy is under way. ALERT: destroys kept failing; it may
    still bill and needs a person. DESTROYED and VANISHED (gone without our destroy) are final.
    """

    REQUESTED = "requested"
    BOOTING = "booting"
    READY = "ready"
    FAILED = "failed"
    DESTROYING = "destroying"
    ALERT = "alert"
    DESTROYED = "destroyed"
    VANISHED = "vanished"
