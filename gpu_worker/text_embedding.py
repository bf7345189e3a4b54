"""The text-embedding exchange of ``POST /v1/embed/text``: request limits and answer shape (pure, no torch).

The orchestrator embeds a search text with the CLIP text tower of the same model that embedded the images, so that
text and pictures share one space. Requests are small on purpose: a query is a sentence, not a document.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EMBED_TEXT_PATH = "/v1/embed/text"
MAX_TEXTS = 16
MAX_TEXT_CHARS = 300
# 16 texts of 300 characters, JSON-escaped (\uXXXX is 6 bytes per character), with room for the envelope.
MAX_REQUEST_BYTES = 64 * 1024
MAX_EMBEDDING_DIM = 8192


class TextEmbedRequest(BaseModel):
    """Texts to embed: 1 to ``MAX_TEXTS`` non-blank texts of at most ``MAX_TEXT_CHARS`` characters each."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS)

    @field_validator("texts")
    @classmethod
    def _bounded(cls, texts: list[str]) -> list[str]:
        for index, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"text {index} is blank")
            if len(text) > MAX_TEXT_CHARS:
                raise ValueError(f"text {index} has {len(text)} characters; at most {MAX_TEXT_CHARS}")
        return texts


class TextEmbeddings(BaseModel):
    """L2-normalised text embeddings, one per text in the request's order, from the model ``model_id``."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=200)
    dim: int = Field(ge=1, le=MAX_EMBEDDING_DIM)
    embeddings: list[list[float]] = Field(max_length=MAX_TEXTS)

    @model_validator(mode="after")
    def _consistent(self) -> TextEmbeddings:
        for row in self.embeddings:
            if len(row) != self.dim:
                raise ValueError(f"an embedding has {len(row)} values, not dim={self.dim}")
            if not all(math.isfinite(value) for value in row):
                raise ValueError("an embedding has a value that is not finite")
        return self
