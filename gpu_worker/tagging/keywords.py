"""Our ``category/label`` tags as XMP keywords, checked before they reach exiftool, and how an edit merges them.

``scene/beach`` becomes ``AI/Scene/beach`` in ``XMP-digiKam:TagsList``, ``AI|Scene|beach`` in
``XMP-lr:HierarchicalSubject`` and ``beach`` in ``XMP-dc:Subject``. Everything under ``AI`` is ours: ``replace``
removes it (and the flat labels that only it explained) and keeps every other keyword; ``append`` only adds.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

ROOT = "AI"
MAX_LABEL_CHARS = 100
MAX_KEYWORD_CHARS = 255
# Bidirectional overrides and isolates can make a keyword display as something else.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Control characters, line and paragraph separators, lone surrogates.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


class XmpField(StrEnum):
    """The three keyword lists we write, as exiftool ``GROUP:TAG`` names."""

    TAGS_LIST = "XMP-digiKam:TagsList"
    SUBJECT = "XMP-dc:Subject"
    HIERARCHICAL_SUBJECT = "XMP-lr:HierarchicalSubject"


class TagMode(StrEnum):
    """``append`` adds our keywords; ``replace`` also removes keywords under ``AI`` that this run does not give."""

    APPEND = "append"
    REPLACE = "replace"


SEPARATORS = {XmpField.TAGS_LIST: "/", XmpField.HIERARCHICAL_SUBJECT: "|"}
Keywords = dict[XmpField, list[str]]


def empty_keywords() -> Keywords:
    """No keyword in any field."""
    return {field: [] for field in XmpField}


@dataclass(frozen=True)
class RejectedTag:
    """A tag that was not written, and why."""

    tag: str
    reason: str


def label_problem(label: str) -> str | None:
    """Why ``label`` may not become (part of) a keyword, or None when it may."""
    if not label:
        return "empty label"
    if len(label) > MAX_LABEL_CHARS:
        return f"label longer than {MAX_LABEL_CHARS} characters"
    if label != label.strip():
        return "leading or trailing whitespace"
    if label.startswith("-"):
        return "starts with '-'"
    if "|" in label:
        return "contains '|', the hierarchy separator of Lightroom"
    for char in label:
        if unicodedata.category(char) in _CONTROL_CATEGORIES or char in _BIDI_CONTROLS:
            return f"contains the control character U+{ord(char):04X}"
        if _noncharacter(ord(char)):  # XML cannot carry them; exiftool writes "?" instead
            return f"contains the noncharacter U+{ord(char):04X}"
    return None


def _noncharacter(code: int) -> bool:
    return 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE


def keywords_for(tags: Iterable[str]) -> tuple[Keywords, list[RejectedTag]]:
    """The keywords for our tags, in first-seen order without duplicates, and the tags refused with a reason."""
    keywords = empty_keywords()
    rejected: list[RejectedTag] = []
    for tag in tags:
        parts = tag.split("/")
        problems = [problem for part in parts if (problem := label_problem(part)) is not None]
        if problems:
            rejected.append(RejectedTag(tag, problems[0]))
            continue
        if len(parts) > 1:
            parts[0] = parts[0][:1].upper() + parts[0][1:]
        hierarchy = [ROOT, *parts]
        values = {
            XmpField.TAGS_LIST: "/".join(hierarchy),
            XmpField.HIERARCHICAL_SUBJECT: "|".join(hierarchy),
            XmpField.SUBJECT: parts[-1],
        }
        if max(len(value) for value in values.values()) > MAX_KEYWORD_CHARS:
            rejected.append(RejectedTag(tag, f"keyword longer than {MAX_KEYWORD_CHARS} characters"))
            continue
        for field, value in values.items():
            if value not in keywords[field]:
                keywords[field].append(value)
    return keywords, rejected


def is_ours(value: str, field: XmpField) -> bool:
    """Whether a hierarchical keyword sits under ``AI``."""
    separator = SEPARATORS[field]
    return value == ROOT or value.startswith(ROOT + separator)


def passable(value: str) -> bool:
    """Whether a value read from a file can be handed back to exiftool unchanged (one argument line, no leading
    whitespace, which exiftool's argument files strip)."""
    return "\n" not in value and "\r" not in value and not value[:1].isspace()


@dataclass(frozen=True)
class KeywordEdit:
    """What to remove and add in each field, and the set of values each field must hold afterwards."""

    removals: Keywords
    additions: Keywords
    expected: dict[XmpField, frozenset[str]]
    changed: bool


def plan_edit(existing: Mapping[XmpField, list[str]], new: Mapping[XmpField, list[str]], mode: TagMode) -> KeywordEdit:
    """Merge our new keywords into a file's ``existing`` ones; other keywords are never touched."""
    removals = empty_keywords()
    if mode is TagMode.REPLACE:
        leaves_removed: set[str] = set()
        leaves_kept: set[str] = set(new.get(XmpField.SUBJECT, []))
        for field, separator in SEPARATORS.items():
            for value in existing.get(field, []):
                leaf = value.rsplit(separator, 1)[-1]
                if not is_ours(value, field):
                    leaves_kept.add(leaf)
                elif value not in new.get(field, []) and passable(value):
                    removals[field].append(value)
                    leaves_removed.add(leaf)
        removals[XmpField.SUBJECT] = [
            value
            for value in dict.fromkeys(existing.get(XmpField.SUBJECT, []))
            if value in leaves_removed and value not in leaves_kept and passable(value)
        ]
        for field in SEPARATORS:
            removals[field] = list(dict.fromkeys(removals[field]))
    additions = {field: list(dict.fromkeys(new.get(field, []))) for field in XmpField}
    expected = {
        field: frozenset(set(existing.get(field, [])) - set(removals[field]) | set(additions[field]))
        for field in XmpField
    }
    changed = any(expected[field] != frozenset(existing.get(field, [])) for field in XmpField)
    return KeywordEdit(removals, additions, expected, changed)
