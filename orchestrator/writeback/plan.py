"""What one write-back puts into one file: keywords from its tags and named people, and MWG face regions.

Pure: the callers read the results and the file's current XMP, this module decides. Keywords follow the rules of
standalone tagging (:mod:`gpu_worker.tagging.keywords`): ``animal/cat`` becomes ``AI/Animal/cat`` in digiKam's
TagsList, ``AI|Animal|cat`` in Lightroom's HierarchicalSubject and ``cat`` in dc:subject; a named person becomes
``AI/People/<name>``. Face regions follow the Metadata Working Group schema: each region's Area is the box's centre
and size, normalized to the picture.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpu_worker.tagging.keywords import (
    Keywords,
    RejectedTag,
    TagMode,
    XmpField,
    keywords_for,
    label_problem,
    plan_edit,
)

PEOPLE_CATEGORY = "people"
REGION_FIELD = "XMP-mwg-rs:RegionInfo"
# Formats exiftool embeds XMP into, by sniffed MIME type, with the file extension exiftool recognises them by.
WRITABLE_MIMES: Mapping[str, str] = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/tiff": ".tif",
    "image/webp": ".webp",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
}
# Face regions describe a still picture; a video's faces are found at many timestamps.
REGION_MIMES = frozenset(mime for mime in WRITABLE_MIMES if mime.startswith("image/"))
# exiftool's JSON import decodes a value of this form as binary data instead of writing the text.
_BASE64_PREFIX = "base64:"
# Areas are compared at this precision: exiftool prints what it read back with up to 15 significant digits.
AREA_DECIMALS = 6
AREA_TOLERANCE = 1e-5


@dataclass(frozen=True)
class FaceBox:
    """A detected face: its box (x1, y1, x2, y2) in pixels of the picture, or normalized to [0, 1], and the name
    of the person it belongs to, if the user named one."""

    box: tuple[float, float, float, float]
    name: str | None = None


@dataclass(frozen=True)
class Region:
    """One MWG face region: the centre (x, y) and size (w, h) of the box, normalized to the picture."""

    x: float
    y: float
    w: float
    h: float
    name: str | None = None

    def as_xmp(self) -> dict[str, Any]:
        """The region as an entry of ``RegionInfo.RegionList`` in exiftool's structure form."""
        entry: dict[str, Any] = {
            "Area": {"X": self.x, "Y": self.y, "W": self.w, "H": self.h, "Unit": "normalized"},
            "Type": "Face",
        }
        if self.name is not None:
            entry["Name"] = self.name
        return entry


@dataclass(frozen=True)
class AssetPlan:
    """What to write into one file. ``regions`` None leaves the file's regions alone (faces were not asked for, or
    were never analyzed, or the format holds no regions)."""

    keywords: Keywords
    regions: tuple[Region, ...] | None
    dimensions: tuple[int, int] | None
    rejected: list[RejectedTag] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether there is nothing of ours to write (in replace mode an empty plan still removes our old ones)."""
        return not any(self.keywords.values()) and not self.regions


@dataclass(frozen=True)
class FileEdit:
    """The complete lists to set in the file (only the changed ones), the fields to clear, and whether anything
    changes at all."""

    set_keywords: dict[XmpField, list[str]]
    clear_keywords: list[XmpField]
    region_info: dict[str, Any] | None
    clear_regions: bool
    expected_keywords: dict[XmpField, frozenset[str]]
    expected_regions: list[dict[str, Any]] | None

    @property
    def changed(self) -> bool:
        """Whether the file needs to be rewritten."""
        return bool(self.set_keywords or self.clear_keywords or self.region_info is not None or self.clear_regions)


def unsupported_reason(mime: str | None) -> str | None:
    """Why a file of this type cannot hold written-back metadata, or None when it can."""
    if mime in WRITABLE_MIMES:
        return None
    return (
        f"write-back into {mime or 'files of an unknown type'} is not supported; "
        f"supported: JPEG, PNG, TIFF, WebP, HEIC, MP4 and MOV"
    )


def text_problem(value: str) -> str | None:
    """Why ``value`` may not be written as a keyword label or region name, or None when it may."""
    problem = label_problem(value)
    if problem is not None:
        return problem
    if value.lower().startswith(_BASE64_PREFIX):
        return "starts with 'base64:', which exiftool would decode as binary data"
    return None


def person_problem(name: str) -> str | None:
    """Why a person's name may not become a keyword, or None when it may ('/' would nest it in the hierarchy)."""
    if "/" in name:
        return "contains '/', the hierarchy separator of digiKam"
    return text_problem(name)


def region_for(box: Sequence[float], *, width: int | None, height: int | None) -> Region | None:
    """The normalized region of a box (pixels of a ``width`` x ``height`` picture, or already normalized when no
    coordinate exceeds 1); None for a box that cannot be placed on the picture."""
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        return None
    x1, y1, x2, y2 = (float(v) for v in box)
    if max(x1, y1, x2, y2) > 1.0:
        if not width or not height:
            return None
        x1, x2, y1, y2 = x1 / width, x2 / width, y1 / height, y2 / height
    x1, x2 = max(0.0, min(x1, 1.0)), max(0.0, min(x2, 1.0))
    y1, y2 = max(0.0, min(y1, 1.0)), max(0.0, min(y2, 1.0))
    if x2 <= x1 or y2 <= y1:
        return None
    return Region(
        x=round((x1 + x2) / 2, AREA_DECIMALS),
        y=round((y1 + y2) / 2, AREA_DECIMALS),
        w=round(x2 - x1, AREA_DECIMALS),
        h=round(y2 - y1, AREA_DECIMALS),
    )


def plan_asset(
    *,
    tags: Iterable[tuple[str, float]],
    people: Iterable[str],
    faces: Sequence[FaceBox] | None,
    mime: str | None,
    width: int | None,
    height: int | None,
    min_score: float,
) -> AssetPlan:
    """Decide an asset's keywords (tags scoring at least ``min_score``, best first, then named people) and, when
    ``faces`` is given for a picture, its face regions; refused tags and names are listed with their reason."""
    ranked = sorted(((tag, score) for tag, score in tags if score >= min_score), key=lambda item: -item[1])
    rejected: list[RejectedTag] = []
    labels: list[str] = []
    for tag, _ in ranked:
        problem = next((p for part in tag.split("/") if (p := text_problem(part)) is not None), None)
        if problem is not None:
            rejected.append(RejectedTag(tag, problem))
        else:
            labels.append(tag)
    for name in dict.fromkeys(people):
        problem = person_problem(name)
        if problem is not None:
            rejected.append(RejectedTag(name, problem))
        else:
            labels.append(f"{PEOPLE_CATEGORY}/{name}")
    keywords, refused = keywords_for(labels)
    rejected += refused
    regions: tuple[Region, ...] | None = None
    if faces is not None and mime in REGION_MIMES:
        found = []
        for face in faces:
            region = region_for(face.box, width=width, height=height)
            if region is None:
                continue
            named = face.name if face.name is not None and text_problem(face.name) is None else None
            found.append(Region(region.x, region.y, region.w, region.h, named))
        regions = tuple(found)
    dimensions = (width, height) if width and height else None
    return AssetPlan(keywords=keywords, regions=regions, dimensions=dimensions, rejected=rejected)


def _same_area(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    try:
        return all(abs(float(a[k]) - float(b[k])) <= AREA_TOLERANCE for k in ("X", "Y", "W", "H"))
    except (KeyError, TypeError, ValueError):
        return False


def same_region(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two RegionList entries describe the same named area (names and types equal, areas within
    rounding)."""
    area_a, area_b = a.get("Area"), b.get("Area")
    if not isinstance(area_a, Mapping) or not isinstance(area_b, Mapping):
        return False
    return (
        a.get("Name") == b.get("Name") and a.get("Type", "Face") == b.get("Type", "Face") and _same_area(area_a, area_b)
    )


def existing_regions(region_info: Any) -> list[dict[str, Any]]:
    """The RegionList entries of a file's RegionInfo as exiftool read it (``-struct``)."""
    if not isinstance(region_info, Mapping):
        return []
    listed = region_info.get("RegionList", [])
    if isinstance(listed, Mapping):
        listed = [listed]
    return [dict(entry) for entry in listed if isinstance(entry, Mapping)] if isinstance(listed, list) else []


def plan_file_edit(
    plan: AssetPlan, *, existing_keywords: Mapping[XmpField, list[str]], existing_region_info: Any, mode: TagMode
) -> FileEdit:
    """Merge a plan into what the file holds: ``append`` adds ours to everything there (regions too, without
    repeating one already present); ``replace`` swaps our earlier keywords (under ``AI``) for these and, when this
    write-back has regions, replaces the file's regions with ours."""
    keyword_edit = plan_edit(existing_keywords, plan.keywords, mode)
    set_keywords: dict[XmpField, list[str]] = {}
    clear_keywords: list[XmpField] = []
    for xmp_field in XmpField:
        before = list(dict.fromkeys(existing_keywords.get(xmp_field, [])))
        if keyword_edit.expected[xmp_field] == frozenset(before):
            continue
        removed = set(keyword_edit.removals[xmp_field])
        final = [value for value in before if value not in removed]
        final += [value for value in keyword_edit.additions[xmp_field] if value not in final]
        if final:
            set_keywords[xmp_field] = final
        else:
            clear_keywords.append(xmp_field)
    region_info: dict[str, Any] | None = None
    clear_regions = False
    expected_regions: list[dict[str, Any]] | None = None
    if plan.regions is not None:
        before_regions = existing_regions(existing_region_info)
        ours = [region.as_xmp() for region in plan.regions]
        if mode is TagMode.APPEND:
            final_regions = before_regions + [
                entry for entry in ours if not any(same_region(entry, old) for old in before_regions)
            ]
        else:
            final_regions = ours
        unchanged = len(final_regions) == len(before_regions) and all(
            same_region(a, b) for a, b in zip(final_regions, before_regions, strict=True)
        )
        if not unchanged:
            expected_regions = final_regions
            if final_regions:
                region_info = {"RegionList": final_regions}
                if plan.dimensions is not None:
                    width, height = plan.dimensions
                    region_info = {"AppliedToDimensions": {"W": width, "H": height, "Unit": "pixel"}, **region_info}
            else:
                clear_regions = True
    expected_keywords = dict(keyword_edit.expected)
    return FileEdit(set_keywords, clear_keywords, region_info, clear_regions, expected_keywords, expected_regions)


def written_summary(plan: AssetPlan, edit: FileEdit) -> dict[str, Any]:
    """What a write put into the file, for the write-back's record: each keyword list and region as it now reads,
    and what was refused."""
    summary: dict[str, Any] = {
        "keywords": {str(f): sorted(values) for f, values in edit.expected_keywords.items()},
        "rejected": [{"tag": r.tag, "reason": r.reason} for r in plan.rejected],
    }
    if edit.expected_regions is not None:
        summary["regions"] = edit.expected_regions
    return summary
