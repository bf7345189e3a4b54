"""People pages: a grid of the tenant's people (face crop, name, face count; most faces or unnamed first) and one
person's page (rename, their photos, their faces to split off or take away, merge into another person).

Forms post with the session's CSRF token and redirect back (303); a refused change re-renders the person's page
with its message (status 422).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from orchestrator.api.dashboard.web import CsrfDep, MemberDep, PageError, WebIdentity, render
from orchestrator.api.deps import SessionDep
from orchestrator.errors import NotFoundError
from orchestrator.people import service

router = APIRouter(include_in_schema=False)

ORDER_LABELS = {"count": "Most photos first", "unnamed": "Unnamed first", "name": "By name"}
MAX_FORM_FIELDS = service.MAX_SPLIT_FACES + 10


async def _form(request: Request) -> dict[str, list[str]]:
    form = await request.form(max_fields=MAX_FORM_FIELDS)
    values: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            values.setdefault(key, []).append(value)
    return values


FormDep = Annotated[dict[str, list[str]], Depends(_form)]


def _tenant(identity: WebIdentity) -> uuid.UUID:
    assert identity.tenant_id is not None  # MemberDep guarantees it
    return identity.tenant_id


def _uuid_or_404(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise PageError(404, "Not found", "There is no such person.") from None


def _page_number(raw: str | None) -> int:
    try:
        return max(1, min(int(raw or "1"), 100_000))
    except ValueError:
        return 1


@router.get("/people", response_class=HTMLResponse)
def people_page(
    request: Request, session: SessionDep, identity: MemberDep, order: str = "count", page: str | None = None
) -> HTMLResponse:
    """The people grid."""
    order = order if order in ORDER_LABELS else "count"
    number = _page_number(page)
    found = service.list_people(
        session,
        tenant_id=_tenant(identity),
        order=order,
        limit=service.PAGE_SIZE,
        offset=(number - 1) * service.PAGE_SIZE,
    )
    pages = max(1, -(-found.count // service.PAGE_SIZE))
    context = {"people": found.people, "count": found.count, "order": order, "orders": ORDER_LABELS}
    return render(request, "people.html", identity, context | {"page": number, "pages": pages})


def _person_context(
    session: Session, identity: WebIdentity, person_id: uuid.UUID, number: int, error: str | None = None
) -> dict[str, Any]:
    tenant_id = _tenant(identity)
    try:
        person = service.get_person(session, tenant_id=tenant_id, person_id=person_id)
    except NotFoundError:
        raise PageError(404, "Not found", "There is no such person.") from None
    found = service.person_assets(
        session,
        tenant_id=tenant_id,
        person_id=person.id,
        limit=service.PAGE_SIZE,
        offset=(number - 1) * service.PAGE_SIZE,
    )
    others = service.list_people(session, tenant_id=tenant_id, order="name", limit=service.MAX_PAGE_SIZE).people
    return {
        "person": person,
        "assets": found.assets,
        "asset_count": found.count,
        "faces": found.faces,
        "others": [p for p in others if p.id != person.id],
        "page": number,
        "pages": max(1, -(-found.count // service.PAGE_SIZE)),
        "error": error,
    }


@router.get("/people/{person_id}", response_class=HTMLResponse)
def person_page(
    request: Request, person_id: str, session: SessionDep, identity: MemberDep, page: str | None = None
) -> HTMLResponse:
    """One person: name form, their photos and faces, split and merge."""
    context = _person_context(session, identity, _uuid_or_404(person_id), _page_number(page))
    return render(request, "person.html", identity, context)


def _refused(request: Request, session: Session, identity: WebIdentity, person_id: uuid.UUID, message: str) -> Response:
    session.rollback()
    context = _person_context(session, identity, person_id, 1, error=message)
    return render(request, "person.html", identity, context, status_code=422)


def _first(form: dict[str, list[str]], key: str) -> str:
    return (form.get(key) or [""])[0]


@router.post("/people/{person_id}/name", response_model=None)
def rename_from_page(
    request: Request, person_id: str, session: SessionDep, identity: MemberDep, _csrf: CsrfDep, form: FormDep
) -> Response:
    """Save a person's name (blank unnames)."""
    pid = _uuid_or_404(person_id)
    try:
        service.rename_person(session, tenant_id=_tenant(identity), person_id=pid, name=_first(form, "name"))
    except service.InvalidPeopleRequestError as exc:
        return _refused(request, session, identity, pid, exc.message)
    except NotFoundError:
        raise PageError(404, "Not found", "There is no such person.") from None
    session.commit()
    return RedirectResponse(f"/people/{pid}?saved=1", status_code=303)


@router.post("/people/{person_id}/merge", response_model=None)
def merge_from_page(
    request: Request, person_id: str, session: SessionDep, identity: MemberDep, _csrf: CsrfDep, form: FormDep
) -> Response:
    """Merge this person into the chosen one and go to the result."""
    pid = _uuid_or_404(person_id)
    try:
        into = uuid.UUID(_first(form, "into"))
    except ValueError:
        return _refused(request, session, identity, pid, "Choose the person to merge into.")
    try:
        target = service.merge_people(session, tenant_id=_tenant(identity), person_id=pid, into_id=into)
    except service.InvalidPeopleRequestError as exc:
        return _refused(request, session, identity, pid, exc.message)
    except NotFoundError:
        raise PageError(404, "Not found", "There is no such person.") from None
    session.commit()
    return RedirectResponse(f"/people/{target.id}", status_code=303)


def _face_ids(form: dict[str, list[str]]) -> list[int] | None:
    try:
        return [int(v) for v in form.get("face_id", [])]
    except ValueError:
        return None


@router.post("/people/{person_id}/split", response_model=None)
def split_from_page(
    request: Request, person_id: str, session: SessionDep, identity: MemberDep, _csrf: CsrfDep, form: FormDep
) -> Response:
    """Move the ticked faces to a new person (or, with ``action=remove``, take them away from this person)."""
    pid = _uuid_or_404(person_id)
    tenant_id = _tenant(identity)
    face_ids = _face_ids(form)
    if not face_ids:
        return _refused(request, session, identity, pid, "Tick at least one face.")
    try:
        if _first(form, "action") == "remove":
            service.get_person(session, tenant_id=tenant_id, person_id=pid)
            for face_id in face_ids:
                if service.get_face(session, tenant_id=tenant_id, face_id=face_id).person_id != pid:
                    raise service.InvalidPeopleRequestError("every ticked face must be one of this person's faces")
                service.move_face(session, tenant_id=tenant_id, face_id=face_id, person_id=None)
            target = pid
        else:
            created = service.split_person(
                session, tenant_id=tenant_id, person_id=pid, face_ids=face_ids, name=_first(form, "name") or None
            )
            target = created.id
    except service.InvalidPeopleRequestError as exc:
        return _refused(request, session, identity, pid, exc.message)
    except NotFoundError:
        raise PageError(404, "Not found", "There is no such person or face.") from None
    session.commit()
    # Taking away every face of an unnamed person deletes the person; go back to the grid then.
    alive = _exists(session, tenant_id, target)
    return RedirectResponse(f"/people/{target}" if alive else "/people", status_code=303)


def _exists(session: Session, tenant_id: uuid.UUID, person_id: uuid.UUID) -> bool:
    try:
        service.get_person(session, tenant_id=tenant_id, person_id=person_id)
    except NotFoundError:
        return False
    return True
