"""Tag vocabularies for zero-shot tagging: categories of labels, each with the prompt templates that phrase them.

A named vocabulary is ``config/vocabularies/<name>.toml``::

    name = "default"
    [categories.scene]
    templates = ["a photo of a {}."]
    labels = ["beach", "forest", { name = "city", prompt = "city street" }]
    background = ["a photo."]   # optional: prompts that absorb probability but never become tags

A batch may instead carry an inline vocabulary: ``{"shape": ["red square", "blue circle"]}`` or
``{"shape": {"labels": [...], "templates": ["a {}"]}}``.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpu_worker.errors import WorkerError

DEFAULT_TEMPLATE = "a photo of {}."
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class VocabularyError(WorkerError):
    """A vocabulary is missing or invalid."""

    code = "invalid_vocabulary"


class Label(BaseModel):
    """One label: ``name`` becomes the tag, ``prompt`` (default: the name) fills the templates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    prompt: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def text(self) -> str:
        """What goes into the templates."""
        return self.prompt or self.name


class Category(BaseModel):
    """Labels scored against each other (one softmax per category)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    labels: list[Label] = Field(min_length=1)
    templates: list[str] = Field(default_factory=lambda: [DEFAULT_TEMPLATE], min_length=1)
    background: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {"labels": value}
        if isinstance(value, dict) and "template" in value:
            value = dict(value)
            value["templates"] = [value.pop("template")]
        return value

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, value: list[str]) -> list[str]:
        for template in value:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain exactly one {{}}")
        return value

    @field_validator("labels")
    @classmethod
    def _unique(cls, value: list[Label]) -> list[Label]:
        names = [label.name for label in value]
        if len(set(names)) != len(names):
            raise ValueError("label names repeat")
        return value


class Vocabulary(BaseModel):
    """Named categories of labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "inline"
    description: str = ""
    categories: dict[str, Category] = Field(min_length=1)

    @field_validator("categories")
    @classmethod
    def _category_names(cls, value: dict[str, Category]) -> dict[str, Category]:
        for name in value:
            if not name or "/" in name:
                raise ValueError(f"category name {name!r} must be non-empty and hold no '/'")
        return value

    @property
    def key(self) -> str:
        """A content hash: equal vocabularies share cached text embeddings."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def load_vocabulary(name: str, folder: Path) -> Vocabulary:
    """Read ``folder/<name>.toml``."""
    if not _NAME.match(name):
        raise VocabularyError(f"vocabulary name {name!r} must be letters, digits, '-' or '_'")
    path = folder / f"{name}.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = sorted(p.stem for p in folder.glob("*.toml"))
        raise VocabularyError(f"vocabulary {name!r} not found in {folder}; known: {', '.join(known)}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise VocabularyError(f"cannot read vocabulary {path}: {exc}") from exc
    raw.setdefault("name", name)
    try:
        return Vocabulary.model_validate(raw)
    except ValidationError as exc:
        raise VocabularyError(f"invalid vocabulary {path}: {exc}") from exc


def inline_vocabulary(spec: Mapping[str, Any]) -> Vocabulary:
    """A vocabulary given in a batch's options: category name -> labels (or a category table)."""
    try:
        return Vocabulary.model_validate({"name": "inline", "categories": dict(spec)})
    except ValidationError as exc:
        raise VocabularyError(f"invalid inline vocabulary: {exc}") from exc
