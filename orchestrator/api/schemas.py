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
