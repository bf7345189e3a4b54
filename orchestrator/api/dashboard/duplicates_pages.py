"""Duplicates in the dashboard: groups of exact copies or near-duplicate pictures side by side (name, size,
dimensions, date and why each belongs), with links to the assets and a "Not duplicates" button per group."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from orchestrator.api.dashboard.web import CsrfDep, MemberDep, render
from orchestrator.api.deps import SessionDep
from orchestrator.duplicates.groups import DEFAULT_MAX_DISTANCE, MAX_DISTANCE_LIMIT
from orchestrator.duplicates.service import Criteria, DuplicateKind, dismiss_group, duplicate_groups
from orchestrator.errors import NotFoundError

router = APIRouter(include_in_schema=False)

GROUPS_PER_PAGE = 30
NOTICES = {
    "dismissed": "Marked as not duplicates. The group stays hidden unless another copy joins it.",
    "gone": "That group has changed since the page was shown; here are the current groups.",
}


def human_size(size: int) -> str:
    """Bytes for people: ``512 B``, ``14.2 KB``, ``3.1 MB``."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _kind(raw: str | None) -> DuplicateKind:
    try:
        return DuplicateKind((raw or DuplicateKind.EXACT.value).strip().lower())
    except ValueError:
        return DuplicateKind.EXACT


def _threshold(raw: str | None) -> int:
    try:
        value = int((raw or "").strip() or DEFAULT_MAX_DISTANCE)
    except ValueError:
        return DEFAULT_MAX_DISTANCE
    return min(max(value, 0), MAX_DISTANCE_LIMIT)


def _page(raw: str | None) -> int:
    try:
        return max(1, int((raw or "1").strip()))
    except ValueError:
        return 1


def _address(kind: DuplicateKind, threshold: int, **extra: str) -> str:
    args = {"kind": kind.value}
    if kind == DuplicateKind.NEAR:
        args["threshold"] = str(threshold)
    return "/duplicates?" + urlencode(args | extra)


@router.get("/duplicates", response_class=HTMLResponse)
def duplicates_page(request: Request, identity: MemberDep, session: SessionDep) -> HTMLResponse:
    """Exact or near duplicate groups of the signed-in tenant, largest first."""
    assert identity.tenant_id is not None
    query = request.query_params
    kind, threshold, page = _kind(query.get("kind")), _threshold(query.get("threshold")), _page(query.get("page"))
    found = duplicate_groups(
        session,
        tenant_id=identity.tenant_id,
        criteria=Criteria(kind=kind, max_distance=threshold),
        limit=GROUPS_PER_PAGE,
        offset=(page - 1) * GROUPS_PER_PAGE,
    )
    more = found.offset + len(found.groups) < found.total
    return render(
        request,
        "duplicates.html",
        identity,
        {
            "found": found,
            "kind": kind.value,
            "threshold": threshold,
            "max_threshold": MAX_DISTANCE_LIMIT,
            "notice": NOTICES.get(query.get("notice", "")),
            "human_size": human_size,
            "exact_url": _address(DuplicateKind.EXACT, threshold),
            "near_url": _address(DuplicateKind.NEAR, threshold),
            "previous_url": _address(kind, threshold, page=str(page - 1)) if page > 1 else None,
            "next_url": _address(kind, threshold, page=str(page + 1)) if more else None,
        },
    )


@router.post("/duplicates/{group_key}/dismiss")
def dismiss_from_page(
    group_key: str,
    session: SessionDep,
    identity: MemberDep,
    _: CsrfDep,
    kind: Annotated[str, Form()] = DuplicateKind.EXACT.value,
    threshold: Annotated[str, Form()] = str(DEFAULT_MAX_DISTANCE),
) -> RedirectResponse:
    """The "Not duplicates" button: hide the group and come back to the same list."""
    assert identity.tenant_id is not None
    chosen, distance = _kind(kind), _threshold(threshold)
    try:
        dismiss_group(
            session,
            tenant_id=identity.tenant_id,
            key=group_key,
            criteria=Criteria(kind=chosen, max_distance=distance),
        )
    except NotFoundError:
        return RedirectResponse(_address(chosen, distance, notice="gone"), status_code=303)
    session.commit()
    return RedirectResponse(_address(chosen, distance, notice="dismissed"), status_code=303)
