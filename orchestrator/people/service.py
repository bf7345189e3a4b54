"""People of a tenant: list, show with their assets, rename, merge, split, move or remove one face; and the asset ids
of a person for searching by person. Keyword-only data access, tenant-scoped: another tenant's id is not found.

Every change by hand marks the faces it moves ``assigned_by = "user"``, so clustering never moves them back.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from orchestrator.db.models import Asset, Face, Person
from orchestrator.errors import MediaAnalysisError, NotFoundError
from orchestrator.people.faces import USER, update_people

MAX_NAME_CHARS = 200
MAX_SPLIT_FACES = 1000
PAGE_SIZE = 48
MAX_PAGE_SIZE = 200
ORDERS = ("count", "unnamed", "name")


class InvalidPeopleRequestError(MediaAnalysisError):
    """A people change that cannot be made as asked (a bad name, merging a person into itself, an empty split)."""

    code = "invalid_people_request"


@dataclass(frozen=True)
class PeoplePage:
    """One page of people and how many the tenant has."""

    people: list[Person]
    count: int


@dataclass(frozen=True)
class PersonAssets:
    """A person's assets (newest first) for one page, how many there are, and the person's faces on that page."""

    assets: list[Asset]
    count: int
    faces: list[Face]


def get_person(session: Session, *, tenant_id: uuid.UUID, person_id: uuid.UUID) -> Person:
    """The tenant's person, or NotFoundError."""
    person = session.scalar(select(Person).where(Person.id == person_id, Person.tenant_id == tenant_id))
    if person is None:
        raise NotFoundError("no such person")
    return person


def get_face(session: Session, *, tenant_id: uuid.UUID, face_id: int) -> Face:
    """The tenant's face, or NotFoundError."""
    face = session.scalar(select(Face).where(Face.id == face_id, Face.tenant_id == tenant_id))
    if face is None:
        raise NotFoundError("no such face")
    return face


def list_people(
    session: Session, *, tenant_id: uuid.UUID, order: str = "count", limit: int = PAGE_SIZE, offset: int = 0
) -> PeoplePage:
    """The tenant's people with at least one face or a name. ``order``: ``count`` (most faces first), ``unnamed``
    (unnamed first, then by count, for naming sessions) or ``name``."""
    if order not in ORDERS:
        raise InvalidPeopleRequestError(f"order is one of {', '.join(ORDERS)}")
    query = select(Person).where(Person.tenant_id == tenant_id)
    unnamed_first = case((Person.name.is_(None), 0), else_=1)
    ordering = {
        "count": (Person.face_count.desc(), Person.created_at, Person.id),
        "unnamed": (unnamed_first, Person.face_count.desc(), Person.id),
        "name": (unnamed_first.desc(), func.lower(Person.name), Person.face_count.desc(), Person.id),
    }[order]
    people = list(session.scalars(query.order_by(*ordering).limit(min(limit, MAX_PAGE_SIZE)).offset(max(offset, 0))))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    return PeoplePage(people=people, count=int(total))


def person_asset_ids_query(*, tenant_id: uuid.UUID, person_id: uuid.UUID) -> Select[uuid.UUID]:
    """A query for the ids of the assets that show this person (for search filters to compose with)."""
    return select(Face.asset_id).where(Face.tenant_id == tenant_id, Face.person_id == person_id).distinct()


def person_asset_ids(session: Session, *, tenant_id: uuid.UUID, person_id: uuid.UUID) -> list[uuid.UUID]:
    """The ids of the assets that show this person; NotFoundError for another tenant's person."""
    get_person(session, tenant_id=tenant_id, person_id=person_id)
    return list(session.scalars(person_asset_ids_query(tenant_id=tenant_id, person_id=person_id)))


def person_assets(
    session: Session, *, tenant_id: uuid.UUID, person_id: uuid.UUID, limit: int = PAGE_SIZE, offset: int = 0
) -> PersonAssets:
    """One page of the person's assets, newest first, with the person's faces in them."""
    get_person(session, tenant_id=tenant_id, person_id=person_id)
    ids = person_asset_ids_query(tenant_id=tenant_id, person_id=person_id)
    base = select(Asset).where(Asset.tenant_id == tenant_id, Asset.id.in_(ids))
    assets = list(
        session.scalars(
            base.order_by(Asset.created_at.desc(), Asset.id)
            .limit(min(max(limit, 1), MAX_PAGE_SIZE))
            .offset(max(offset, 0))
        )
    )
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    faces = list(
        session.scalars(
            select(Face)
            .where(Face.person_id == person_id, Face.asset_id.in_([a.id for a in assets]))
            .order_by(Face.asset_id, Face.face_index)
        )
    )
    return PersonAssets(assets=assets, count=int(total), faces=faces)


def clean_name(raw: str | None) -> str | None:
    """A person's name as stored: trimmed, inner whitespace collapsed; blank means unnamed. Control characters and
    names over 200 characters are refused."""
    if raw is None:
        return None
    name = " ".join(raw.split())
    if not name:
        return None
    if len(name) > MAX_NAME_CHARS:
        raise InvalidPeopleRequestError(f"a name has at most {MAX_NAME_CHARS} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidPeopleRequestError("a name cannot contain control characters")
    return name


def rename_person(session: Session, *, tenant_id: uuid.UUID, person_id: uuid.UUID, name: str | None) -> Person:
    """Name (or, with a blank name, unname) a person."""
    person = get_person(session, tenant_id=tenant_id, person_id=person_id)
    person.name = clean_name(name)
    session.flush()
    return person


def merge_people(session: Session, *, tenant_id: uuid.UUID, person_id: uuid.UUID, into_id: uuid.UUID) -> Person:
    """Move every face of ``person_id`` to ``into_id`` (by hand) and delete ``person_id``. The target keeps its name;
    an unnamed target takes the merged person's name."""
    source = get_person(session, tenant_id=tenant_id, person_id=person_id)
    target = get_person(session, tenant_id=tenant_id, person_id=into_id)
    if source.id == target.id:
        raise InvalidPeopleRequestError("a person cannot be merged into itself")
    for face in session.scalars(select(Face).where(Face.person_id == source.id)):
        face.person_id, face.assigned_by = target.id, USER
    if target.name is None:
        target.name = source.name
    session.flush()
    session.delete(source)
    session.flush()
    update_people(session, person_ids=[target.id])
    return target


def split_person(
    session: Session, *, tenant_id: uuid.UUID, person_id: uuid.UUID, face_ids: Sequence[int], name: str | None = None
) -> Person:
    """Move the chosen faces of a person to a new person (by hand). At least one face must stay behind."""
    person = get_person(session, tenant_id=tenant_id, person_id=person_id)
    chosen = set(face_ids)
    if not chosen:
        raise InvalidPeopleRequestError("choose at least one face to split off")
    if len(chosen) > MAX_SPLIT_FACES:
        raise InvalidPeopleRequestError(f"split at most {MAX_SPLIT_FACES} faces at once")
    faces = list(session.scalars(select(Face).where(Face.person_id == person.id)))
    moving = [f for f in faces if f.id in chosen]
    if len(moving) != len(chosen):
        raise InvalidPeopleRequestError("every face to split off must be one of this person's faces")
    if len(moving) == len(faces):
        raise InvalidPeopleRequestError("leave at least one face with this person (to rename it, change its name)")
    created = Person(tenant_id=tenant_id, name=clean_name(name))
    session.add(created)
    session.flush()
    for face in moving:
        face.person_id, face.assigned_by = created.id, USER
    session.flush()
    update_people(session, person_ids=[person.id, created.id])
    return created


def move_face(session: Session, *, tenant_id: uuid.UUID, face_id: int, person_id: uuid.UUID | None) -> Face:
    """Put one face with another person, or (``person_id`` None) take it away from its person for good; clustering
    leaves it where the user put it."""
    face = get_face(session, tenant_id=tenant_id, face_id=face_id)
    target = get_person(session, tenant_id=tenant_id, person_id=person_id) if person_id is not None else None
    previous = face.person_id
    face.person_id, face.assigned_by = (target.id if target else None), USER
    session.flush()
    update_people(session, person_ids=[p for p in (previous, face.person_id) if p is not None])
    return face


def faces_of(session: Session, *, tenant_id: uuid.UUID, asset_id: uuid.UUID) -> list[tuple[Face, Person | None]]:
    """An asset's faces with their people, in the order of the faces result (for the asset page)."""
    rows = session.execute(
        select(Face, Person)
        .outerjoin(Person, Person.id == Face.person_id)
        .where(Face.tenant_id == tenant_id, Face.asset_id == asset_id)
        .order_by(Face.face_index)
    )
    return [(row[0], row[1]) for row in rows]
