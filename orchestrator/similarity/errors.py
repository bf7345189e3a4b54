"""What a similarity query can fail with; each error has a stable code for the API."""

from __future__ import annotations

from orchestrator.errors import ConflictError, MediaAnalysisError


class NoEmbeddingError(ConflictError):
    """The asset has no embedding to compare with (not analyzed with CLIP, or not finished)."""

    code = "no_embedding"


class ModelMismatchError(ConflictError):
    """The query vector comes from another model (or has another length) than the stored embeddings."""

    code = "model_mismatch"


class TextEncoderUnavailableError(MediaAnalysisError):
    """No worker can turn a text into an embedding now; the caller may retry later."""

    code = "text_encoder_unavailable"
