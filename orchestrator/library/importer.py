"""Import a library folder: media files with their ``.ai.json`` sidecars become jobs, assets, results and people
again, without running any model; files without a sidecar become uploads to analyse.

Accepts a folder made by :func:`orchestrator.library.export.export_library` (sidecars with a ``library`` section:
ids, jobs, statuses and people are restored) and a folder tagged by ``gpu-worker tag`` (sidecars of version 1 or 2
without one: all of it becomes one new job named after the folder). Bytes are stored exactly as uploads are
(content-addressed, kind sniffed from the bytes) and prepared (probed, thumbnailed) by the same function.

Idempotent: an asset whose id (or, without one, whose bytes) the tenant already has is left alone, so importing a
folder twice adds nothing. Each file is written in a savepoint of the caller's transaction: one bad file (or a
malformed sidecar, reported with its path and reason) never stops the others. With ``commit_each_file`` every file
is committed on its own (the command line does this, so that a long import never holds SQLite's write lock for
long, and an interrupted one keeps what it finished).
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from gpu_worker.contract import MediaKind
from gpu_worker.sidecar_schema import PersonAssignment, Sidecar, SidecarError, read_sidecar
from gpu_worker.sniff import SNIFF_BYTES, sniff
from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Embedding, Face, Job, Person, Result, ResultTag, Tenant
from orchestrator.enums import AssetStatus, JobStatus
from orchestrator.errors import MediaAnalysisError, NotFoundError
from orchestrator.indexing import index_assets, rebuild_tenant
from orchestrator.ingest import finish_upload, prepare_asset
from orchestrator.library.documents import FACES_ANALYZER, analyzer_rows, aware, clean_text, parse_uuid
from orchestrator.library.scan import Entry, scan_folder
from orchestrator.names import sanitize_display_name
from orchestrator.storage import READ_CHUNK_BYTES, LocalStorage, StagedUpload, blob_key

FINISHED = (AssetStatus.DONE, AssetStatus.FAILED)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
NEW_FILES_SUFFIX = " (new files)"
ProgressObserver = Callable[[int, int, str], None]
"""Called after each file with (files done, files in all, the file's path relative to the folder)."""


class LibraryImportError(MediaAnalysisError):
    """The import cannot start (no such folder)."""

    code = "library_import_failed"


class _FileRefusedError(Exception):
    """One file is not imported; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImportProblem:
    """A file (or sidecar) that was not imported, by its path relative to the folder, and why."""

    path: str
    reason: str


@dataclass
class ImportSummary:
    """What an import did. ``queued_assets`` and ``queued_jobs`` are the new uploads to prepare and plan once the
    transaction is committed (the reaper sends them too, should that enqueue fail)."""

    source: Path
    files: int = 0
    restored: int = 0
    uploaded: int = 0
    unchanged: int = 0
    skipped: int = 0
    jobs_created: int = 0
    people_created: int = 0
    problems: list[ImportProblem] = field(default_factory=list)
    queued_assets: list[uuid.UUID] = field(default_factory=list)
    queued_jobs: list[uuid.UUID] = field(default_factory=list)


@dataclass(frozen=True)
class ImportOptions:
    """Limits and defaults of an import: those of uploads, and what a job of new files runs."""

    max_upload_bytes: int
    max_image_pixels: int
    analyzers: list[str]
    options: dict[str, dict[str, object]] = field(default_factory=dict)
    only_sidecars: bool = False
    commit_each_file: bool = False


def import_library(
    session: Session,
    storage: LocalStorage,
    *,
    tenant_id: uuid.UUID,
    source: Path,
    options: ImportOptions,
    on_progress: ProgressObserver | None = None,
) -> ImportSummary:
    """Import the folder ``source`` into the tenant's library, in the caller's transaction (the caller commits)."""
    if session.get(Tenant, tenant_id) is None:
        raise NotFoundError("tenant not found")
    source = source.absolute()
    if not source.is_dir():
        raise LibraryImportError(f"{source} is not a folder")
    run = _Import(session, storage, tenant_id=tenant_id, source=source, options=options)
    run.execute(on_progress)
    return run.summary


class _Import:
    def __init__(
        self, session: Session, storage: LocalStorage, *, tenant_id: uuid.UUID, source: Path, options: ImportOptions
    ) -> None:
        self.session = session
        self.storage = storage
        self.tenant_id = tenant_id
        self.source = source
        self.options = options
        self.summary = ImportSummary(source=source)
        self.jobs: dict[str, Job] = {}
        self.people: dict[str, Person] = {}
        self.folder_analyzers: set[str] = set()
        # A blob this file's savepoint stored, to remove if the savepoint is rolled back and nothing else uses it.
        self.new_blob: str | None = None

    def execute(self, on_progress: ProgressObserver | None) -> None:
        scan = scan_folder(self.source)
        for relative, reason in scan.unreadable:
            self._problem(relative, reason)
        entries = scan.files + scan.lone_sidecars
        self.summary.files = len(entries)
        parsed: list[tuple[Entry, Sidecar | None]] = []
        for entry in entries:
            sidecar = None
            if entry.sidecar is not None:
                try:
                    sidecar = read_sidecar(entry.sidecar)
                except SidecarError as exc:
                    self._problem(entry.relative + ".ai.json", f"sidecar not read: {exc.reason}")
                    continue
                if sidecar.library is None:
                    self.folder_analyzers |= set(sidecar.analyzers)
            parsed.append((entry, sidecar))
        for done, (entry, sidecar) in enumerate(parsed, start=1):
            self._one(entry, sidecar)
            if self.options.commit_each_file:
                self.session.commit()
            if on_progress is not None:
                on_progress(done, len(parsed), entry.relative)
        self.session.flush()
        rebuild_tenant(self.session, tenant_id=self.tenant_id)

    def _problem(self, relative: str, reason: str) -> None:
        self.summary.problems.append(ImportProblem(relative, reason))

    def _one(self, entry: Entry, sidecar: Sidecar | None) -> None:
        before = _Snapshot.of(self)
        self.new_blob = None
        try:
            with self.session.begin_nested():
                if sidecar is None:
                    self._new_file(entry)
                elif entry.media:
                    self._restore(entry, sidecar)
                else:
                    self._restore_record(entry, sidecar)
        except (_FileRefusedError, OSError, MediaAnalysisError, SQLAlchemyError, ValueError) as exc:
            before.restore(self)
            if isinstance(exc, _FileRefusedError):
                reason = exc.reason
            elif isinstance(exc, MediaAnalysisError):
                reason = exc.message
            else:
                reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
            self._problem(entry.relative, reason)
            if self.new_blob is not None and not self._referenced(self.new_blob):
                self.storage.delete(self.new_blob)

    # files without a sidecar: new uploads

    def _new_file(self, entry: Entry) -> None:
        if self.options.only_sidecars:
            self.summary.skipped += 1
            return
        if sniff(_read_head(entry.path)) is None:
            self.summary.skipped += 1  # not media: a text file, a catalog, a thumbnail database
            return
        _, sha256, size = _read_head_and_hash(entry.path)
        if size > self.options.max_upload_bytes:
            raise _FileRefusedError(f"{size} bytes, over the upload limit of {self.options.max_upload_bytes} bytes")
        if self._has_bytes(sha256):
            self.summary.unchanged += 1
            return
        job = self._new_files_job()
        staged = self._stage(entry.path)
        outcome = finish_upload(
            self.session,
            storage=self.storage,
            job=job,
            staged=staged,
            raw_name=entry.path.name,
            max_upload_bytes=self.options.max_upload_bytes,
            max_image_pixels=self.options.max_image_pixels,
        )
        if outcome.created_blob:
            self.new_blob = outcome.storage_key
        if outcome.status == "accepted" and outcome.asset_id is not None:
            self.summary.uploaded += 1
            self.summary.queued_assets.append(outcome.asset_id)
            return
        if outcome.status == "duplicate":
            self.summary.unchanged += 1
            return
        raise _FileRefusedError(outcome.message or "refused")

    def _new_files_job(self) -> Job:
        key = "new-files"
        if key not in self.jobs:
            now = utcnow()
            job = Job(
                tenant_id=self.tenant_id,
                name=(self.source.name + NEW_FILES_SUFFIX)[:200],
                status=JobStatus.QUEUED,
                analyzers=list(self.options.analyzers),
                options=dict(self.options.options),
                sealed_at=now,
            )
            self.session.add(job)
            self.session.flush()
            self.jobs[key] = job
            self.summary.jobs_created += 1
            self.summary.queued_jobs.append(job.id)
        return self.jobs[key]

    # files with a sidecar: restored without analysis

    def _restore(self, entry: Entry, sidecar: Sidecar) -> None:
        library = sidecar.library
        if library is not None and library.status not in FINISHED:
            # Exported while it was still being analysed: its results are incomplete, so it is analysed again.
            self._new_file(entry)
            return
        head, sha256, size = _read_head_and_hash(entry.path)
        found = sniff(head)
        if found is None:
            raise _FileRefusedError("the file's bytes are not a supported image, video or audio format")
        if size > self.options.max_upload_bytes:
            raise _FileRefusedError(f"{size} bytes, over the upload limit of {self.options.max_upload_bytes} bytes")
        asset_id = self._asset_id(sidecar, sha256)
        if asset_id is None:
            self.summary.unchanged += 1
            return
        job = self._job_for(sidecar)
        staged = self._stage(entry.path)
        key = blob_key(self.tenant_id, staged.sha256)
        if self.storage.commit(staged, key):
            self.new_blob = key
        asset = self._asset(sidecar, asset_id=asset_id, job=job, entry=entry)
        asset.sha256, asset.size_bytes, asset.storage_key = staged.sha256, staged.size, key
        asset.media_kind, asset.mime_type = found.kind, found.mime
        self.session.add(asset)
        self.session.flush()
        prepare_asset(
            self.session, storage=self.storage, asset_id=asset.id, max_image_pixels=self.options.max_image_pixels
        )
        self._finish(asset, sidecar)

    def _restore_record(self, entry: Entry, sidecar: Sidecar) -> None:
        """A sidecar alone: a file that failed (or whose bytes were lost) in the library it was exported from."""
        if sidecar.library is None:
            raise _FileRefusedError("a sidecar without its media file")
        if sidecar.library.status not in FINISHED:
            raise _FileRefusedError("a sidecar without its media file, of a file that was not analysed")
        asset_id = self._asset_id(sidecar, None)
        if asset_id is None:
            self.summary.unchanged += 1
            return
        asset = self._asset(sidecar, asset_id=asset_id, job=self._job_for(sidecar), entry=entry)
        sha256 = sidecar.file.sha256
        asset.sha256 = sha256 if sha256 and _SHA256_HEX.fullmatch(sha256) else None
        asset.size_bytes = sidecar.file.size_bytes or 0
        asset.media_kind = sidecar.file.media_kind if sidecar.file.media_kind in set(MediaKind) else None
        asset.mime_type = clean_text(sidecar.file.mime, 100)
        asset.status = AssetStatus.UPLOADED
        self.session.add(asset)
        self.session.flush()
        self._finish(asset, sidecar)

    def _asset_id(self, sidecar: Sidecar, sha256: str | None) -> uuid.UUID | None:
        """The id to restore the asset under, a new id when that one is another tenant's, or None when this tenant
        already has the asset (imported before)."""
        library = sidecar.library
        wanted = parse_uuid(library.asset_id) if library is not None else None
        if wanted is not None:
            existing = self.session.get(Asset, wanted)
            if existing is not None and existing.tenant_id == self.tenant_id:
                return None
            if existing is None:
                return wanted
        if library is not None:
            # Its id belonged to someone else: the same name and bytes in this tenant mean an earlier import.
            known = select(Asset.id).where(
                Asset.tenant_id == self.tenant_id,
                Asset.original_name == self._name(sidecar, None),
                Asset.sha256 == (sha256 or sidecar.file.sha256),
            )
            return None if self.session.scalar(known.limit(1)) is not None else uuid.uuid4()
        return None if sha256 is not None and self._has_bytes(sha256) else uuid.uuid4()

    def _asset(self, sidecar: Sidecar, *, asset_id: uuid.UUID, job: Job, entry: Entry) -> Asset:
        library = sidecar.library
        file = sidecar.file
        created_at = (aware(library.created_at) if library is not None else None) or utcnow()
        return Asset(
            id=asset_id,
            tenant_id=self.tenant_id,
            job_id=job.id,
            original_name=self._name(sidecar, entry),
            status=AssetStatus.UPLOADED,
            width=file.width,
            height=file.height,
            duration_s=file.duration_s,
            created_at=created_at,
            updated_at=created_at,
        )

    @staticmethod
    def _name(sidecar: Sidecar, entry: Entry | None) -> str:
        return sanitize_display_name(sidecar.file.name or (entry.path.name if entry is not None else None))

    def _finish(self, asset: Asset, sidecar: Sidecar) -> None:
        """The sidecar's status, results, faces and people on a stored (and prepared) asset."""
        library = sidecar.library
        if library is not None:
            asset.status = AssetStatus(library.status)
            asset.error_code = clean_text(library.error_code, 64)
            asset.error_message = clean_text(library.error_message, 2000)
        elif sidecar.analyzers:
            asset.status, asset.error_code = AssetStatus.DONE, None
            asset.error_message = clean_text(
                "; ".join(f"{name}: {e.message}" for name, e in sidecar.errors.items()), 2000
            )
        else:
            first = next(iter(sidecar.errors.values()), None)
            asset.status = AssetStatus.FAILED
            asset.error_code = clean_text(first.code, 64) if first is not None else "no_result"
            asset.error_message = (
                clean_text(first.message, 2000) if first is not None else "the sidecar holds no analyzer result"
            )
        file = sidecar.file
        asset.width = asset.width if asset.width is not None else file.width
        asset.height = asset.height if asset.height is not None else file.height
        asset.duration_s = asset.duration_s if asset.duration_s is not None else file.duration_s
        for rows in analyzer_rows(sidecar):
            self.session.add(
                Result(
                    tenant_id=self.tenant_id,
                    asset_id=asset.id,
                    analyzer=rows.analyzer,
                    model_id=rows.model_id,
                    payload=rows.payload,
                )
            )
            self.session.add_all(
                ResultTag(tenant_id=self.tenant_id, asset_id=asset.id, analyzer=rows.analyzer, tag=t.tag, score=t.score)
                for t in rows.tags
            )
            if rows.embedding is not None:
                self.session.add(
                    Embedding(
                        tenant_id=self.tenant_id,
                        asset_id=asset.id,
                        analyzer=rows.analyzer,
                        model_id=rows.model_id,
                        dim=rows.dim,
                        vector=rows.embedding,
                    )
                )
        self.session.flush()
        # The faces (and search text) derive from the results through the same hook as analysed files; then the
        # recorded assignments replace whatever automatic assignment that made.
        index_assets(self.session, tenant_id=self.tenant_id, asset_ids=[asset.id])
        if FACES_ANALYZER in sidecar.analyzers:
            self._assign_faces(asset.id, library.people if library is not None else [])
        self.summary.restored += 1

    def _assign_faces(self, asset_id: uuid.UUID, assignments: list[PersonAssignment]) -> None:
        recorded = {a.face_index: a for a in assignments}
        for face in self.session.scalars(select(Face).where(Face.asset_id == asset_id)):
            assignment = recorded.get(face.face_index)
            person = self._person(assignment) if assignment is not None else None
            face.person_id = person.id if person is not None else None
            face.assigned_by = _assigned_by(assignment)

    def _job_for(self, sidecar: Sidecar) -> Job:
        """The job a restored asset goes into: its own job restored (by id when free, else anew), or one job named
        after the folder for sidecars that know no job."""
        library = sidecar.library
        key = f"job:{library.job.id}" if library is not None else "folder"
        if key in self.jobs:
            return self.jobs[key]
        now = utcnow()
        if library is None:
            job = Job(
                tenant_id=self.tenant_id,
                name=self.source.name[:200],
                analyzers=sorted(self.folder_analyzers),
                created_at=now,
            )
        else:
            record = library.job
            wanted = parse_uuid(record.id)
            existing = self.session.get(Job, wanted) if wanted is not None else None
            if existing is not None and existing.tenant_id == self.tenant_id:
                self.jobs[key] = existing
                return existing
            job = Job(
                id=wanted if wanted is not None and existing is None else uuid.uuid4(),
                tenant_id=self.tenant_id,
                name=clean_text(record.name, 200) or "",
                analyzers=list(record.analyzers or []),
                options=dict(record.options or {}),
                created_at=aware(record.created_at) or now,
            )
        job.status, job.sealed_at, job.finished_at = JobStatus.DONE, job.created_at, now
        self.session.add(job)
        self.session.flush()
        self.jobs[key] = job
        self.summary.jobs_created += 1
        return job

    def _person(self, assignment: PersonAssignment) -> Person | None:
        """The person a face was assigned to: restored by id when free, else found by name, else created; None for
        a face that was unassigned by hand. Counts, covers and centroids are recomputed by the rebuild."""
        key = assignment.person_id or f"name:{assignment.person_name}"
        if key in self.people:
            return self.people[key]
        wanted = parse_uuid(assignment.person_id)
        name = clean_text(assignment.person_name, 200)
        person = None
        if wanted is not None:
            found = self.session.get(Person, wanted)
            if found is not None and found.tenant_id == self.tenant_id:
                person = found
            elif found is not None:
                wanted = uuid.uuid4()  # another tenant's id: the same person anew, shared by this import's faces
        elif name is not None:
            person = self.session.scalar(
                select(Person).where(Person.tenant_id == self.tenant_id, Person.name == name).limit(1)
            )
        else:
            return None
        if person is None:
            person = Person(id=wanted or uuid.uuid4(), tenant_id=self.tenant_id, name=name, face_count=0)
            self.session.add(person)
            self.session.flush()
            self.summary.people_created += 1
        self.people[key] = person
        return person

    # bytes

    def _stage(self, path: Path) -> StagedUpload:
        staged = self.storage.stage(self.options.max_upload_bytes)
        try:
            with _open_no_link(path) as handle:
                while chunk := handle.read(READ_CHUNK_BYTES):
                    staged.write(chunk)
        except OSError:
            staged.discard()
            raise
        staged.close()
        if staged.over_limit:  # the file grew since it was measured
            staged.discard()
            raise _FileRefusedError(f"over the upload limit of {self.options.max_upload_bytes} bytes")
        return staged

    def _has_bytes(self, sha256: str) -> bool:
        known = select(Asset.id).where(Asset.tenant_id == self.tenant_id, Asset.sha256 == sha256).limit(1)
        return self.session.scalar(known) is not None

    def _referenced(self, key: str) -> bool:
        return self.session.scalar(select(Asset.id).where(Asset.storage_key == key).limit(1)) is not None


def _open_no_link(path: Path) -> BinaryIO:
    """Open a file for reading, refusing a symbolic link put in its place since the folder was listed."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    return os.fdopen(descriptor, "rb")


def _read_head(path: Path) -> bytes:
    with _open_no_link(path) as handle:
        return handle.read(SNIFF_BYTES)


def _read_head_and_hash(path: Path) -> tuple[bytes, str, int]:
    """The first bytes (to sniff), the sha256 and the size of a file, in one read."""
    digest = hashlib.sha256()
    head = b""
    size = 0
    with _open_no_link(path) as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            if len(head) < SNIFF_BYTES:
                head += chunk[: SNIFF_BYTES - len(head)]
            digest.update(chunk)
            size += len(chunk)
    return head, digest.hexdigest(), size


def _assigned_by(assignment: PersonAssignment | None) -> str | None:
    if assignment is None or not assignment.assigned_by:
        return None
    return clean_text(assignment.assigned_by, 8)


@dataclass(frozen=True)
class _Snapshot:
    """What a file's savepoint may change outside the database, to put back when it is rolled back."""

    jobs: frozenset[str]
    people: frozenset[str]
    counts: tuple[int, int, int, int, int, int, int, int]

    @classmethod
    def of(cls, run: _Import) -> _Snapshot:
        s = run.summary
        counts = (s.restored, s.uploaded, s.unchanged, s.skipped, s.jobs_created, s.people_created)
        return cls(frozenset(run.jobs), frozenset(run.people), (*counts, len(s.queued_assets), len(s.queued_jobs)))

    def restore(self, run: _Import) -> None:
        s = run.summary
        s.restored, s.uploaded, s.unchanged, s.skipped, s.jobs_created, s.people_created = self.counts[:6]
        del s.queued_assets[self.counts[6] :]
        del s.queued_jobs[self.counts[7] :]
        for key in set(run.jobs) - self.jobs:
            del run.jobs[key]
        for key in set(run.people) - self.people:
            del run.people[key]
