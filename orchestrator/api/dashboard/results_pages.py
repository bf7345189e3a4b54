"""Results in the dashboard: the gallery (thumbnails, filters, keyset pages) and one asset's page (the image with its
object and face boxes, or a player; tags with scores; the transcript with timestamps that seek; NSFW blurred above
the tenant's threshold).

Result payloads come from workers, some of them rented machines: what is drawn from them (boxes, labels, times) is
checked and clamped here, and anything malformed is left out rather than failing the page.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from orchestrator.api.dashboard.search_view import search_context
from orchestrator.api.dashboard.web import MemberDep, PageError, render
from orchestrator.api.deps import SessionDep, StorageDep
from orchestrator.enums import AssetStatus
from orchestrator.errors import NotFoundError
from orchestrator.gallery import Direction, GalleryFilterError, gallery_page, parse_filters, tag_facets, tenant_jobs
from orchestrator.job_reports import nsfw_score
from orchestrator.jobs import get_asset, results_for_assets
from orchestrator.people.service import faces_of
from orchestrator.tenant_settings import get_tenant_settings

router = APIRouter(include_in_schema=False)

MAX_BOXES = 500  # drawn per asset; a crowd beyond this is not readable anyway
MAX_SEGMENTS = 2000
MAX_LABEL_CHARS = 60


@dataclass(frozen=True)
class Box:
    """One box to draw over the media, in percent of its width and height; ``t`` is the video frame's time."""

    kind: str  # object | face
    label: str
    score: float | None
    left: float
    top: float
    width: float
    height: float
    t: float | None = None


@dataclass(frozen=True)
class Segment:
    """One timed piece of the transcript."""

    start: float
    end: float | None
    text: str


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _box(kind: str, label: str, score: object, coords: object, t: object = None) -> Box | None:
    """A box from relative ``[x1, y1, x2, y2]``; None when it is not four numbers that make a box."""
    if not isinstance(coords, list | tuple) or len(coords) != 4:
        return None
    values = [_number(v) for v in coords]
    if any(v is None for v in values):
        return None
    x1, y1, x2, y2 = (min(1.0, max(0.0, v or 0.0)) for v in values)
    if x2 <= x1 or y2 <= y1:
        return None
    return Box(
        kind=kind,
        label=label[:MAX_LABEL_CHARS],
        score=_number(score),
        left=round(100 * x1, 3),
        top=round(100 * y1, 3),
        width=round(100 * (x2 - x1), 3),
        height=round(100 * (y2 - y1), 3),
        t=_number(t),
    )


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def overlay_boxes(payloads: dict[str, dict[str, Any]]) -> list[Box]:
    """The object and face boxes of an asset's results: an image's, or every analyzed frame's of a video."""
    boxes: list[Box] = []
    objects = payloads.get("objects", {})
    frames = _dicts(objects.get("frames")) or [{"timestamp_s": None, "detections": objects.get("detections")}]
    for frame in frames:
        for found in _dicts(frame.get("detections")):
            label = found.get("label")
            made = _box(
                "object",
                str(label) if label else "object",
                found.get("score"),
                found.get("box"),
                frame.get("timestamp_s"),
            )
            if made:
                boxes.append(made)
    for face in _dicts(payloads.get("faces", {}).get("faces")):
        made = _box("face", "face", face.get("probability"), face.get("box"), face.get("timestamp_s"))
        if made:
            boxes.append(made)
    return boxes[:MAX_BOXES]


def transcript_segments(payloads: dict[str, dict[str, Any]]) -> list[Segment]:
    """The transcript's timed segments with text."""
    segments = []
    for raw in _dicts(payloads.get("transcribe", {}).get("segments"))[:MAX_SEGMENTS]:
        start = _number(raw.get("start"))
        text = raw.get("text")
        if start is None or start < 0 or not isinstance(text, str) or not text.strip():
            continue
        segments.append(Segment(start=round(start, 2), end=_number(raw.get("end")), text=text.strip()))
    return segments


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _page_link(args: dict[str, str], **extra: str) -> str:
    return "/gallery?" + urlencode({**args, **extra}) if args or extra else "/gallery"


@router.get("/gallery", response_class=HTMLResponse)
def gallery(request: Request, session: SessionDep, identity: MemberDep) -> HTMLResponse:
    """The tenant's assets as thumbnails, newest first, filtered and paged; bad filter values are named, not fatal."""
    assert identity.tenant_id is not None  # MemberDep guarantees it
    query = request.query_params
    filters, errors = parse_filters({k: query.get(k, "") for k in ("tag", "kind", "status", "from", "to", "job")})
    cursor = query.get("cursor") or None
    direction: Direction = "newer" if query.get("direction") == "newer" else "older"
    try:
        page = gallery_page(session, tenant_id=identity.tenant_id, filters=filters, cursor=cursor, direction=direction)
    except GalleryFilterError as exc:
        errors[exc.field] = exc.message
        page = gallery_page(session, tenant_id=identity.tenant_id, filters=filters)
    args = filters.query_args()
    threshold = get_tenant_settings(session, tenant_id=identity.tenant_id).nsfw_threshold
    return render(
        request,
        "gallery.html",
        identity,
        {
            "page": page,
            "filters": filters,
            "errors": errors,
            "facets": tag_facets(session, tenant_id=identity.tenant_id),
            "jobs": tenant_jobs(session, tenant_id=identity.tenant_id),
            "statuses": [s.value for s in AssetStatus],
            "threshold": threshold,
            "older_url": _page_link(args, cursor=page.older) if page.older else None,
            "newer_url": _page_link(args, cursor=page.newer, direction="newer") if page.newer else None,
            "first_url": _page_link(args) if page.newer else None,
            # With a search in the box, its ranked page and links take the place of the gallery's.
            **search_context(
                session,
                tenant_id=identity.tenant_id,
                q=query.get("q", ""),
                offset=query.get("offset"),
                filters=filters,
                errors=errors,
            ),
        },
    )


@router.get("/assets/{asset_id}", response_class=HTMLResponse)
def asset_page(
    request: Request, asset_id: str, session: SessionDep, identity: MemberDep, storage: StorageDep
) -> HTMLResponse:
    """One asset: its media with overlays, tags with scores, transcript, NSFW handling and error."""
    assert identity.tenant_id is not None  # MemberDep guarantees it
    try:
        asset = get_asset(session, tenant_id=identity.tenant_id, asset_id=uuid.UUID(asset_id))
    except (ValueError, NotFoundError):
        raise PageError(404, "Not found", "There is no such asset.") from None
    payloads, tags = results_for_assets(session, tenant_id=identity.tenant_id, asset_ids=[asset.id])
    found = payloads[asset.id]
    score = nsfw_score(found)
    threshold = get_tenant_settings(session, tenant_id=identity.tenant_id).nsfw_threshold
    boxes = overlay_boxes(found)
    times = sorted({b.t for b in boxes if b.t is not None})
    segments = transcript_segments(found)
    counts = found.get("objects", {}).get("counts")
    return render(
        request,
        "asset.html",
        identity,
        {
            "asset": asset,
            "has_file": asset.storage_key is not None and storage.exists(asset.storage_key),
            "tags": tags[asset.id],
            "boxes": boxes,
            "object_boxes": sum(1 for b in boxes if b.kind == "object"),
            "face_boxes": sum(1 for b in boxes if b.kind == "face"),
            "first_t": times[0] if times else None,
            "segments": [(s, clock(s.start)) for s in segments],
            "transcript_text": found.get("transcribe", {}).get("text") if not segments else None,
            "language": found.get("transcribe", {}).get("language"),
            "counts": {str(k): v for k, v in counts.items() if isinstance(v, int)} if isinstance(counts, dict) else {},
            "person_count": found.get("objects", {}).get("person_count"),
            "face_count": found.get("faces", {}).get("face_count"),
            "nsfw_score": score,
            "threshold": threshold,
            "blurred": score is not None and score > threshold,
            "analyzers": sorted(found),
            "people_faces": faces_of(session, tenant_id=identity.tenant_id, asset_id=asset.id),
        },
    )
