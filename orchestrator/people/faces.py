"""Face rows from the faces analyzer's results, and people grown from them (runs in the caller's transaction).

``refresh_faces`` (after results are written) turns each asset's faces payload into ``Face`` rows and lets new faces
join known people at once (clustering step a). ``cluster_pending`` (once per finished job) groups the faces no person
took into new people (step b). ``rebuild_people`` repairs a tenant from its results. Faces assigned by hand
(``assigned_by == "user"``) are never moved here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from orchestrator.db.models import Face, Person, Result
from orchestrator.people.clustering import EMBEDDING_DIM, ClusteringParams, assign, centroid, cluster
from orchestrator.people.settings import clustering_params

FACES_ANALYZER = "faces"
AUTO = "auto"
USER = "user"


def embedding_bytes(values: Sequence[float] | np.ndarray[Any, Any]) -> bytes:
    """A face embedding as stored: float32 little-endian bytes."""
    return np.asarray(values, dtype="<f4").tobytes()


def embedding_of(raw: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A stored embedding back as a float32 vector."""
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def _face_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The faces of a result payload as Face column values; malformed entries are skipped, never trusted."""
    rows = []
    for index, face in enumerate(payload.get("faces") or []):
        if not isinstance(face, dict):
            continue
        box = face.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
            continue
        vector = face.get("embedding")
        embedding = None
        if isinstance(vector, list) and len(vector) == EMBEDDING_DIM:
            array = np.asarray(vector, dtype=np.float32)
            if np.isfinite(array).all() and float(np.linalg.norm(array)) > 0:
                embedding = embedding_bytes(array / np.linalg.norm(array))
        timestamp = face.get("timestamp_s")
        rows.append(
            {
                "face_index": index,
                "box": [float(v) for v in box],
                "probability": float(face.get("probability") or 0.0),
                "timestamp_s": float(timestamp) if isinstance(timestamp, int | float) else None,
                "embedding": embedding,
            }
        )
    return rows


def _unchanged(face: Face, row: dict[str, Any]) -> bool:
    return bool(
        face.embedding == row["embedding"] and face.box == row["box"] and face.timestamp_s == row["timestamp_s"]
    )


def refresh_faces(
    session: Session, *, tenant_id: uuid.UUID, asset_ids: Sequence[uuid.UUID], params: ClusteringParams | None = None
) -> list[int]:
    """Make the Face rows of these assets match their faces results and assign new faces to known people.

    A face whose box, time and embedding did not change keeps its row and its person; every other row is replaced.
    Returns the ids of the faces created.
    """
    touched_people: set[uuid.UUID] = set()
    created: list[Face] = []
    results = {
        r.asset_id: r
        for r in session.scalars(
            select(Result).where(
                Result.tenant_id == tenant_id, Result.asset_id.in_(asset_ids), Result.analyzer == FACES_ANALYZER
            )
        )
    }
    existing: dict[uuid.UUID, dict[int, Face]] = {}
    for face in session.scalars(select(Face).where(Face.tenant_id == tenant_id, Face.asset_id.in_(asset_ids))):
        existing.setdefault(face.asset_id, {})[face.face_index] = face
    for asset_id in asset_ids:
        result = results.get(asset_id)
        rows = _face_rows(result.payload) if result is not None else []
        old = existing.get(asset_id, {})
        keep = {
            row["face_index"] for row in rows if row["face_index"] in old and _unchanged(old[row["face_index"]], row)
        }
        for index, face in old.items():
            if index not in keep:
                if face.person_id is not None:
                    touched_people.add(face.person_id)
                session.delete(face)
        session.flush()
        for row in rows:
            if row["face_index"] in keep:
                old[row["face_index"]].probability = row["probability"]
                continue
            face = Face(tenant_id=tenant_id, asset_id=asset_id, **row)
            session.add(face)
            created.append(face)
    session.flush()
    touched_people |= assign_to_people(session, tenant_id=tenant_id, faces=created, params=params)
    update_people(session, person_ids=touched_people)
    return [face.id for face in created]


def _members(session: Session, tenant_id: uuid.UUID) -> tuple[list[uuid.UUID], np.ndarray[Any, Any], list[int]]:
    """Every assigned face's embedding with the index of its person (people in first-seen order)."""
    people: dict[uuid.UUID, int] = {}
    vectors, owners = [], []
    for person_id, raw in session.execute(
        select(Face.person_id, Face.embedding).where(
            Face.tenant_id == tenant_id, Face.person_id.is_not(None), Face.embedding.is_not(None)
        )
    ):
        if person_id is not None and raw is not None:
            owners.append(people.setdefault(person_id, len(people)))
            vectors.append(embedding_of(raw))
    matrix = np.stack(vectors) if vectors else np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return list(people), matrix, owners


def assign_to_people(
    session: Session, *, tenant_id: uuid.UUID, faces: Sequence[Face], params: ClusteringParams | None = None
) -> set[uuid.UUID]:
    """Step (a) for these faces (those without a person, never moved by hand). Returns the people that grew."""
    candidates = [f for f in faces if f.person_id is None and f.assigned_by is None and f.embedding is not None]
    if not candidates:
        return set()
    people, members, owners = _members(session, tenant_id)
    vectors = np.stack([embedding_of(f.embedding) for f in candidates if f.embedding is not None])
    grown = set()
    for found in assign(vectors, members, owners, params or clustering_params()):
        face = candidates[found.face]
        face.person_id, face.assigned_by = people[found.person], AUTO
        grown.add(people[found.person])
    session.flush()
    return grown


def _lock_tenant_people(session: Session, tenant_id: uuid.UUID) -> None:
    """Serialise clustering per tenant on PostgreSQL, so two jobs finishing together cannot both create a person
    from the same faces. SQLite allows one writer at a time already."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"people:{tenant_id}"})


def cluster_pending(
    session: Session, *, tenant_id: uuid.UUID, params: ClusteringParams | None = None
) -> list[uuid.UUID]:
    """Step (b): group the tenant's faces that no person took (and nobody unassigned by hand) into new people.

    Pending faces first get another chance to join a known person (people may have grown since they arrived).
    Returns the ids of the people created.
    """
    chosen = params or clustering_params()
    _lock_tenant_people(session, tenant_id)
    pending = list(
        session.scalars(
            select(Face)
            .where(
                Face.tenant_id == tenant_id,
                Face.person_id.is_(None),
                Face.assigned_by.is_(None),
                Face.embedding.is_not(None),
            )
            .order_by(Face.id)
        )
    )
    grown = assign_to_people(session, tenant_id=tenant_id, faces=pending, params=chosen)
    pending = [f for f in pending if f.person_id is None]
    created = []
    if pending:
        vectors = np.stack([embedding_of(f.embedding) for f in pending if f.embedding is not None])
        for group in cluster(vectors, chosen):
            person = Person(tenant_id=tenant_id)
            session.add(person)
            session.flush()
            for index in group:
                pending[index].person_id, pending[index].assigned_by = person.id, AUTO
            created.append(person.id)
    session.flush()
    update_people(session, person_ids=grown | set(created))
    return created


def update_people(session: Session, *, person_ids: Iterable[uuid.UUID]) -> None:
    """Recompute centroid, face count and cover face of these people; an unnamed person left without faces goes."""
    for person_id in set(person_ids):
        person = session.get(Person, person_id)
        if person is None:
            continue
        faces = list(session.scalars(select(Face).where(Face.person_id == person_id)))
        if not faces and person.name is None:
            session.delete(person)
            continue
        vectors = [embedding_of(f.embedding) for f in faces if f.embedding is not None]
        person.centroid = embedding_bytes(centroid(np.stack(vectors)).tolist()) if vectors else None
        person.face_count = len(faces)
        person.cover_face_id = max(faces, key=_cover_rank).id if faces else None
    session.flush()


def _cover_rank(face: Face) -> tuple[float, int]:
    """The clearest face makes the cover: the largest box (normalised area) weighted by detection probability."""
    x1, y1, x2, y2 = face.box
    return (max(0.0, x2 - x1) * max(0.0, y2 - y1) * face.probability, -face.id)


def rebuild_people(session: Session, *, tenant_id: uuid.UUID, params: ClusteringParams | None = None) -> None:
    """Re-derive a tenant's faces from its results, then grow and create people; hand-made assignments of unchanged
    faces stay, and counts and covers of every person are recomputed."""
    asset_ids = list(
        session.scalars(select(Result.asset_id).where(Result.tenant_id == tenant_id, Result.analyzer == FACES_ANALYZER))
    )
    orphaned = select(Face.asset_id).where(Face.tenant_id == tenant_id, Face.asset_id.not_in(asset_ids))
    asset_ids += list(session.scalars(orphaned.distinct()))
    for start in range(0, len(asset_ids), 500):
        refresh_faces(session, tenant_id=tenant_id, asset_ids=asset_ids[start : start + 500], params=params)
    cluster_pending(session, tenant_id=tenant_id, params=params)
    update_people(session, person_ids=session.scalars(select(Person.id).where(Person.tenant_id == tenant_id)))


def count_pending(session: Session, *, tenant_id: uuid.UUID) -> int:
    """Faces that wait for clustering (no person, never unassigned by hand, with an embedding)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Face)
            .where(
                Face.tenant_id == tenant_id,
                Face.person_id.is_(None),
                Face.assigned_by.is_(None),
                Face.embedding.is_not(None),
            )
        )
        or 0
    )


__all__ = ["cluster_pending", "count_pending", "rebuild_people", "refresh_faces", "update_people"]
