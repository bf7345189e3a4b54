"""Request and response schemas, by role: ``XCreate`` in, ``XPublic`` out, ``XsPublic(data, count)`` for lists."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    """The body of every error answer: a stable code and a readable message."""

    code: str
    message: str


class TenantCreate(BaseModel):
    """A new tenant."""

    name: str = Field(min_length=1, max_length=100)


class TenantPublic(BaseModel):
    """A tenant as the admin sees it."""

    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    created_at: datetime


class TenantsPublic(BaseModel):
    """A list of tenants."""

    data: list[TenantPublic]
    count: int


class ApiKeyCreate(BaseModel):
    """A new API key for a tenant."""

    name: str = Field(default="", max_length=100)


class ApiKeyIssued(BaseModel):
    """A freshly issued key; ``key`` is shown this once and never stored."""

    id: uuid.UUID
    key: str
    prefix: str
    created_at: datetime


class JobCreate(BaseModel):
    """A new job; analyzers default to the deployment's default set."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=200)
    analyzers: list[str] | None = None
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ProgressPublic(BaseModel):
    """Asset counts of a job by status."""

    total: int
    uploaded: int
    prepared: int
    analyzing: int
    done: int
    failed: int


class JobPublic(BaseModel):
    """A job with its progress and any notices (analyzers that could not run, and how to enable them)."""

    id: uuid.UUID
    name: str
    status: str
    analyzers: list[str]
    created_at: datetime
    sealed_at: datetime | None
    finished_at: datetime | None
    progress: ProgressPublic
    notices: dict[str, str]


class JobsPublic(BaseModel):
    """A page of jobs."""

    data: list[JobPublic]
    count: int


class UploadedFilePublic(BaseModel):
    """What happened to one file of an upload."""

    name: str
    status: str
    status_code: int
    size: int
    asset_id: uuid.UUID | None = None
    sha256: str | None = None
    media_kind: str | None = None
    code: str | None = None
    message: str | None = None


class UploadPublic(BaseModel):
    """The answer to an upload: one entry per file part, in order."""

    files: list[UploadedFilePublic]
    accepted: int
    rejected: int


class TagPublic(BaseModel):
    """One tag of an asset."""

    tag: str
    score: float
    analyzer: str


class AssetPublic(BaseModel):
    """An asset with its status, error and results."""

    id: uuid.UUID
    job_id: uuid.UUID
    name: str
    media_kind: str | None
    mime_type: str | None
    size: int
    sha256: str | None
    status: str
    error_code: str | None
    error_message: str | None
    width: int | None
    height: int | None
    duration_s: float | None
    tags: list[TagPublic]
    results: dict[str, dict[str, Any]]


class AssetsPublic(BaseModel):
    """A page of assets."""

    data: list[AssetPublic]
    count: int


class CancelPublic(BaseModel):
    """The answer to a cancel: the job, whether this call cancelled it, and what it stopped."""

    job: JobPublic
    cancelled_now: bool
    stopped_batches: int
    cancelled_files: int


class NotRetryablePublic(BaseModel):
    """A failed file that retry cannot put back to work, and why."""

    asset_id: uuid.UUID
    name: str
    code: str | None
    reason: str


class RetryPublic(BaseModel):
    """The answer to a retry: how many failed files went back to work, and those that cannot."""

    job: JobPublic
    retried: int
    not_retryable: list[NotRetryablePublic]


class BackendUsePublic(BaseModel):
    """How much of a job ran on one backend (a rented instance with its GPU, a local GPU worker, or the CPU)."""

    kind: str
    label: str
    batches: int
    assets: int
    run_s: float
    cost_usd: float
    gpu_name: str | None
    price_per_h_usd: float | None
    instance_id: uuid.UUID | None
    inferred: bool = Field(description="the instance was inferred from the tenant's instances alive at the time")


class BatchLinePublic(BaseModel):
    """One batch of a job."""

    id: uuid.UUID
    status: str
    assets: int
    attempts: int
    backend: str
    started_at: datetime | None
    finished_at: datetime | None
    run_s: float | None
    cost_usd: float
    last_error: str | None


class FailedFilePublic(BaseModel):
    """A failed file of a job with its error, and whether retry can put it back to work."""

    asset_id: uuid.UUID
    name: str
    code: str | None
    message: str | None
    retryable: bool


class JobReportPublic(BaseModel):
    """Where a job's batches ran, its estimated cost so far, and its failed files."""

    job: JobPublic
    backends: list[BackendUsePublic]
    batches: list[BatchLinePublic]
    cost_usd: float
    cost_is_estimate: bool
    failed: list[FailedFilePublic]
    failed_total: int


class AssetCardPublic(BaseModel):
    """What every listing of an asset carries: name, kind, status, size, dimensions and thumbnail address."""

    id: uuid.UUID
    job_id: uuid.UUID
    name: str
    media_kind: str | None
    status: str
    created_at: datetime
    size: int
    width: int | None
    height: int | None
    duration_s: float | None
    thumbnail_url: str | None


class GalleryItemPublic(AssetCardPublic):
    """An asset as the gallery lists it: its best few tags, NSFW score and thumbnail address."""

    error_code: str | None
    error_message: str | None
    tags: list[TagPublic]
    nsfw_score: float | None


class GalleryPublic(BaseModel):
    """A page of a tenant's assets, newest first; pass ``older`` (or ``newer``) back as ``cursor`` for the next page
    (with ``direction=newer`` for the newer one)."""

    data: list[GalleryItemPublic]
    count: int
    older: str | None
    newer: str | None
