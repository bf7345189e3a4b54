"""The batch contract between the orchestrator and every backend that executes analysis.

A backend receives a :class:`BatchManifest` and answers with a :class:`BatchResult`: one :class:`ItemResult` per item,
each holding per-analyzer outputs or per-analyzer errors. One bad item never fails the batch. This module is pure
pydantic so that the orchestrator can import it without the inference stack.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class MediaKind(StrEnum):
    """What a file holds, decided from its bytes."""

    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"


class ManifestItem(BaseModel):
    """One file to analyze: a local path (in-process and local backends) or a short-lived URL (rented instances)."""

    asset_id: str
    media_kind: MediaKind
    path: str | None = None
    url: str | None = None
    sha256: str | None = None


class BatchManifest(BaseModel):
    """Everything a backend needs for one batch, and nothing more (no credentials beyond the URLs themselves)."""

    batch_id: str
    analyzers: list[str] = Field(default_factory=lambda: ["clip"])
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    items: list[ManifestItem]


class ItemError(BaseModel):
    """Why one analyzer failed on one item: a stable machine-readable code and a readable message."""

    code: str
    message: str


class TagScore(BaseModel):
    """One tag with its calibrated score in [0, 1]; ``tag`` is hierarchical, e.g. ``scene/beach``."""

    tag: str
    score: float


class AnalyzerOutput(BaseModel):
    """What one analyzer produced for one item; ``payload`` is the full analyzer-specific result."""

    model_id: str
    tags: list[TagScore] = Field(default_factory=list)
    embedding: list[float] | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class ItemResult(BaseModel):
    """Outputs and errors for one item, keyed by analyzer name."""

    asset_id: str
    outputs: dict[str, AnalyzerOutput] = Field(default_factory=dict)
    errors: dict[str, ItemError] = Field(default_factory=dict)


class BatchResult(BaseModel):
    """The answer to a manifest.

    ``unavailable`` names analyzers that could not run at all on this backend (for example, missing weights), each
    with a message that tells the user how to provide them; those analyzers have no per-item errors.
    """

    batch_id: str
    items: list[ItemResult]
    unavailable: dict[str, str] = Field(default_factory=dict)
    device: str = "cpu"
    elapsed_s: float = 0.0
