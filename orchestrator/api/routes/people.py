"""People: faces grouped into persons. List, show with their assets, rename, merge, split, move one face, and a
face's thumbnail. Every id is the calling tenant's; another tenant's id answers 404."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.deps import SessionDep, StorageDep, TenantDep
from orchestrator.api.error_responses import TENANT_ERRORS, error_responses
from orchestrator.api.paging import Offset
from orchestrator.db.models import Asset, Face, Person
from orchestrator.errors import NotFoundError
from orchestrator.people import service
from orchestrator.people.crops import face_crop_jpeg

router = APIRouter(tags=["people"], responses=TENANT_ERRORS)
NOT_FOUND = error_responses(404)

# Face ids are 64-bit; a larger number is no face (and must not reach PostgreSQL as an out-of-range integer).
FaceId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class FacePublic(BaseModel):
    """One detected face: its asset, box (x1, y1, x2, y2 in [0, 1]), time in a video, and its person."""

    id: int
    asset_id: uuid.UUID
    box: list[float]
    probability: float
    timestamp_s: float | None
    person_id: uuid.UUID | None
    assigned_by: str | None
    crop_url: str


class PersonPublic(BaseModel):
    """A person: name (None until named), how many faces, and the face that shows them best."""

    id: uuid.UUID
    name: str | None
    face_count: int
    cover_face_id: int | None
    cover_url: str | None
    created_at: datetime


class PeoplePublic(BaseModel):
    """A page of people and how many the tenant has."""

    data: list[PersonPublic]
    count: int


class PersonAssetPublic(BaseModel):
    """An asset that shows the person."""

    id: uuid.UUID
    original_name: str
    media_kind: str | None
    created_at: datetime


class PersonDetailPublic(PersonPublic):
    """A person with one page of their assets (newest first) and their faces in those assets."""

    assets: list[PersonAssetPublic]
    asset_count: int
    faces: list[FacePublic]


class PersonUpdate(BaseModel):
    """A new name; null or blank unnames."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(max_length=service.MAX_NAME_CHARS * 2)


class PersonMerge(BaseModel):
    """The person to merge into."""

    model_config = ConfigDict(extra="forbid")
    into: uuid.UUID


class PersonSplit(BaseModel):
    """The faces to move to a new person, and optionally its name."""

    model_config = ConfigDict(extra="forbid")
    face_ids: list[int] = Field(min_length=1, max_length=service.MAX_SPLIT_FACES)
    name: str | None = Field(default=None, max_length=service.MAX_NAME_CHARS * 2)


class FaceUpdate(BaseModel):
    """The person this face belongs to; null takes it away from its person (clustering leaves it alone then)."""

    model_config = ConfigDict(extra="forbid")
    person_id: uuid.UUID | None


def face_public(face: Face) -> FacePublic:
    """A face as the API shows it."""
    return FacePublic(
        id=face.id,
        asset_id=face.asset_id,
        box=list(face.box),
        probability=face.probability,
        timestamp_s=face.timestamp_s,
        person_id=face.person_id,
        assigned_by=face.assigned_by,
        crop_url=f"/api/v1/faces/{face.id}/crop",
    )


def person_public(person: Person) -> PersonPublic:
    """A person as the API shows it."""
    cover = person.cover_face_id
    return PersonPublic(
        id=person.id,
        name=person.name,
        face_count=person.face_count,
        cover_face_id=cover,
        cover_url=f"/api/v1/faces/{cover}/crop" if cover is not None else None,
        created_at=person.created_at,
    )


def _asset_public(asset: Asset) -> PersonAssetPublic:
    return PersonAssetPublic(
        id=asset.id, original_name=asset.original_name, media_kind=asset.media_kind, created_at=asset.created_at
    )


def _detail(session: SessionDep, tenant_id: uuid.UUID, person: Person, limit: int, offset: int) -> PersonDetailPublic:
    page = service.person_assets(session, tenant_id=tenant_id, person_id=person.id, limit=limit, offset=offset)
    return PersonDetailPublic(
        **person_public(person).model_dump(),
        assets=[_asset_public(a) for a in page.assets],
        asset_count=page.count,
        faces=[face_public(f) for f in page.faces],
    )


@router.get("/people")
def list_people(
    session: SessionDep,
    tenant: TenantDep,
    order: Literal["count", "unnamed", "name"] = "count",
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE_SIZE)] = service.PAGE_SIZE,
    offset: Offset = 0,
) -> PeoplePublic:
    """The tenant's people: most faces first, unnamed first (``order=unnamed``), or by name."""
    page = service.list_people(session, tenant_id=tenant.id, order=order, limit=limit, offset=offset)
    return PeoplePublic(data=[person_public(p) for p in page.people], count=page.count)


@router.get("/people/{person_id}", responses=NOT_FOUND)
def get_person(
    person_id: uuid.UUID,
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE_SIZE)] = service.PAGE_SIZE,
    offset: Offset = 0,
) -> PersonDetailPublic:
    """A person with a page of the assets that show them."""
    person = service.get_person(session, tenant_id=tenant.id, person_id=person_id)
    return _detail(session, tenant.id, person, limit, offset)


@router.patch("/people/{person_id}", responses=NOT_FOUND)
def rename_person(person_id: uuid.UUID, body: PersonUpdate, session: SessionDep, tenant: TenantDep) -> PersonPublic:
    """Name or unname a person (at most 200 characters after trimming)."""
    person = service.rename_person(session, tenant_id=tenant.id, person_id=person_id, name=body.name)
    answer = person_public(person)
    session.commit()
    return answer


@router.post("/people/{person_id}/merge", responses=NOT_FOUND)
def merge_person(person_id: uuid.UUID, body: PersonMerge, session: SessionDep, tenant: TenantDep) -> PersonPublic:
    """Merge this person into ``into``: their faces move there and this person is deleted."""
    target = service.merge_people(session, tenant_id=tenant.id, person_id=person_id, into_id=body.into)
    answer = person_public(target)
    session.commit()
    return answer


@router.post("/people/{person_id}/split", status_code=200, responses=NOT_FOUND)
def split_person(person_id: uuid.UUID, body: PersonSplit, session: SessionDep, tenant: TenantDep) -> PersonPublic:
    """Move the chosen faces of this person to a new person; answers the new person."""
    created = service.split_person(
        session, tenant_id=tenant.id, person_id=person_id, face_ids=body.face_ids, name=body.name
    )
    answer = person_public(created)
    session.commit()
    return answer


@router.patch("/faces/{face_id}", responses=NOT_FOUND)
def move_face(face_id: FaceId, body: FaceUpdate, session: SessionDep, tenant: TenantDep) -> FacePublic:
    """Put a face with another person, or take it away from its person (``person_id`` null)."""
    face = service.move_face(session, tenant_id=tenant.id, face_id=face_id, person_id=body.person_id)
    answer = face_public(face)
    session.commit()
    return answer


@router.get("/faces/{face_id}/crop", response_class=Response, responses=NOT_FOUND)
def face_crop(face_id: FaceId, session: SessionDep, tenant: TenantDep, storage: StorageDep) -> Response:
    """The face as a JPEG of at most 160 px, cut from the stored image (a video's thumbnail)."""
    face = service.get_face(session, tenant_id=tenant.id, face_id=face_id)
    asset = session.get(Asset, face.asset_id)
    key = None
    if asset is not None:
        key = asset.thumbnail_key if asset.media_kind == "video" else asset.storage_key
    if key is None or not storage.exists(key):
        raise NotFoundError("no picture to crop this face from")
    return Response(
        face_crop_jpeg(storage.path_for(key), face.box),
        media_type="image/jpeg",
        # The crop changes only if the asset is analysed again (a new face id), so browsers may keep it a day.
        headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
