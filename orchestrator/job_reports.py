"""What a job did and what came out of it: where its batches ran, what that cost, which files failed and why, and its
results as rows for export (data access, keyword-only, tenant-scoped).

Cost is an estimate: a batch that ran on a rented instance is charged its run time at that instance's $/h (storage
included); batches on a local GPU worker or on the in-process CPU cost nothing. The budget ledger, not this report,
is what a tenant is billed from: an instance also bills while it boots and idles.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Batch, Instance, Job, Result, ResultTag
from orchestrator.enums import AssetStatus, Backend, BatchStatus
from orchestrator.jobs import get_job

EXPORT_PAGE_ROWS = 500
TAG_SCORE_DIGITS = 4
# Spreadsheets run a cell that starts with one of these as a formula; a file name or tag is never meant as one.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# The payload fields that export rows read, with the JSON types they must have.
SUMMARY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "counts": dict,
    "person_count": (int, float),
    "face_count": (int, float),
    "text": str,
    "nsfw_score": (int, float),
    "nsfw_classifier_score": (int, float),
}
NSFW_ANALYZERS = ("clip", "nsfw")
CSV_COLUMNS = (
    "asset_id",
    "name",
    "status",
    "media_kind",
    "tags",
    "object_count",
    "face_count",
    "person_count",
    "transcript",
    "nsfw_score",
    "error_code",
    "error_message",
)


@dataclass(frozen=True)
class BackendUse:
    """How much of a job ran on one backend: a rented instance (with its GPU), a local GPU worker, or the CPU."""

    key: str
    kind: str
    label: str
    batches: int
    assets: int
    run_s: float
    cost_usd: float
    gpu_name: str | None = None
    price_per_h_usd: float | None = None
    instance_id: uuid.UUID | None = None
    # True when the instance was found from the tenant's instances alive at that time, not recorded on the batch.
    inferred: bool = False


@dataclass(frozen=True)
class BatchLine:
    """One batch of the job as the job page lists it."""

    id: uuid.UUID
    status: str
    assets: int
    attempts: int
    backend_label: str
    started_at: datetime | None
    finished_at: datetime | None
    run_s: float | None
    cost_usd: float
    last_error: str | None


@dataclass(frozen=True)
class FailedFile:
    """A file of the job that failed, with its stable error code and message, and whether retry can help."""

    asset_id: uuid.UUID
    name: str
    code: str | None
    message: str | None
    retryable: bool


@dataclass(frozen=True)
class JobReport:
    """Backends, estimated cost and failures of one job."""

    job_id: uuid.UUID
    backends: list[BackendUse]
    batches: list[BatchLine]
    batch_counts: dict[str, int]
    cost_usd: float
    cost_is_estimate: bool
    failed: list[FailedFile]
    failed_total: int


@dataclass(frozen=True)
class ResultRow:
    """One asset of a job as exported: its status, tags with scores, counts, transcript, NSFW score and error."""

    asset_id: str
    name: str
    status: str
    media_kind: str | None
    tags: list[dict[str, float | str]] = field(default_factory=list)
    object_count: int | None = None
    face_count: int | None = None
    person_count: int | None = None
    transcript: str | None = None
    nsfw_score: float | None = None
    error_code: str | None = None
    error_message: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The row as a JSON object."""
        return asdict(self)

    def as_csv(self) -> list[str]:
        """The row as CSV cells, in :data:`CSV_COLUMNS` order; text cells are safe to open in a spreadsheet."""
        tags = "; ".join(f"{t['tag']}={t['score']}" for t in self.tags)
        values: list[object] = [
            self.asset_id,
            self.name,
            self.status,
            self.media_kind,
            tags,
            self.object_count,
            self.face_count,
            self.person_count,
            self.transcript,
            self.nsfw_score,
            self.error_code,
            self.error_message,
        ]
        return ["" if v is None else (_cell(v) if isinstance(v, str) else str(v)) for v in values]


def _cell(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def backend_label(kind: str | None, gpu_name: str | None = None) -> str:
    """A person's name for where a batch ran."""
    if kind == Backend.CLOUD:
        return f"cloud instance ({gpu_name})" if gpu_name else "cloud instance"
    if kind == Backend.LOCAL:
        return "local GPU worker"
    if kind == Backend.IN_PROCESS:
        return "in-process (CPU)"
    return kind or "not run yet"


def _run_s(batch: Batch) -> float | None:
    if batch.started_at is None or batch.finished_at is None:
        return None
    return max(0.0, (batch.finished_at - batch.started_at).total_seconds())


def _instances_for(session: Session, *, tenant_id: uuid.UUID, batches: list[Batch]) -> list[Instance]:
    """The tenant's instances that the job's cloud batches can have run on: recorded on a batch, or alive meanwhile."""
    recorded = {b.instance_id for b in batches if b.instance_id is not None}
    starts = [b.started_at for b in batches if b.backend == Backend.CLOUD and b.started_at is not None]
    conditions: list[ColumnElement[bool]] = []
    if recorded:
        conditions.append(Instance.id.in_(recorded))
    if starts:
        conditions.append(or_(Instance.destroyed_at.is_(None), Instance.destroyed_at >= min(starts)))
    if not conditions:
        return []
    return list(
        session.scalars(select(Instance).where(Instance.tenant_id == tenant_id, or_(*conditions)).order_by(Instance.id))
    )


@dataclass(frozen=True)
class _Ran:
    """Where a cloud batch ran: one instance, or (when it was not recorded) the instances ready meanwhile."""

    instance: Instance | None
    price_per_h_usd: float | None
    gpu_name: str | None
    inferred: bool


def _where_ran(batch: Batch, instances: list[Instance]) -> _Ran:
    recorded = next((i for i in instances if i.id == batch.instance_id), None)
    if recorded is not None:
        return _Ran(recorded, recorded.price_per_h_usd, recorded.gpu_name, False)
    if batch.started_at is None:
        return _Ran(None, None, None, True)
    start, end = batch.started_at, batch.finished_at or utcnow()
    alive = [
        i
        for i in instances
        if i.ready_at is not None and i.ready_at <= end and (i.destroyed_at is None or i.destroyed_at >= start)
    ]
    if len(alive) == 1:
        return _Ran(alive[0], alive[0].price_per_h_usd, alive[0].gpu_name, True)
    if not alive:
        return _Ran(None, None, None, True)
    # Several of the tenant's instances were ready: the batch ran on one of them, at their mean price.
    gpus = {i.gpu_name for i in alive}
    price = sum(i.price_per_h_usd for i in alive) / len(alive)
    return _Ran(None, price, gpus.pop() if len(gpus) == 1 else None, True)


def job_report(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, failed_limit: int = 200) -> JobReport:
    """Where the job's batches ran and what they cost so far, and its failed files (the first ``failed_limit``)."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    batches = list(session.scalars(select(Batch).where(Batch.job_id == job.id).order_by(Batch.created_at, Batch.id)))
    sizes = _batch_sizes(session, job=job)
    instances = _instances_for(session, tenant_id=tenant_id, batches=batches)
    uses: dict[str, dict[str, Any]] = {}
    lines: list[BatchLine] = []
    counts: dict[str, int] = {}
    total_cost = 0.0
    for batch in batches:
        counts[str(batch.status)] = counts.get(str(batch.status), 0) + 1
        run_s = _run_s(batch)
        ran = _where_ran(batch, instances) if batch.backend == Backend.CLOUD else _Ran(None, None, None, False)
        done = batch.status == BatchStatus.DONE
        cost = (run_s or 0.0) * ran.price_per_h_usd / 3600 if done and ran.price_per_h_usd is not None else 0.0
        total_cost += cost
        label = backend_label(batch.backend, ran.gpu_name)
        if done:
            key = f"cloud:{ran.instance.id}" if ran.instance is not None else str(batch.backend)
            use = uses.setdefault(
                key,
                {
                    "key": key,
                    "kind": str(batch.backend),
                    "label": label,
                    "batches": 0,
                    "assets": 0,
                    "run_s": 0.0,
                    "cost_usd": 0.0,
                    "gpu_name": ran.gpu_name,
                    "price_per_h_usd": ran.price_per_h_usd,
                    "instance_id": ran.instance.id if ran.instance is not None else None,
                    "inferred": ran.inferred,
                },
            )
            use["batches"] += 1
            use["assets"] += sizes.get(batch.id, 0)
            use["run_s"] += run_s or 0.0
            use["cost_usd"] += cost
        elif batch.status == BatchStatus.PENDING:
            label = "waiting for a backend"
        elif batch.status == BatchStatus.RUNNING:
            label = "running"
        lines.append(
            BatchLine(
                id=batch.id,
                status=str(batch.status),
                assets=sizes.get(batch.id, 0),
                attempts=batch.attempts,
                backend_label=label,
                started_at=batch.started_at,
                finished_at=batch.finished_at,
                run_s=run_s,
                cost_usd=round(cost, 6),
                last_error=batch.last_error,
            )
        )
    backends = [
        BackendUse(**{**u, "run_s": round(u["run_s"], 3), "cost_usd": round(u["cost_usd"], 6)}) for u in uses.values()
    ]
    failed_rows = list(
        session.scalars(
            select(Asset)
            .where(Asset.job_id == job.id, Asset.status == AssetStatus.FAILED)
            .order_by(Asset.created_at, Asset.id)
            .limit(failed_limit)
        )
    )
    failed_total = _count_failed(session, job=job) if len(failed_rows) == failed_limit else len(failed_rows)
    return JobReport(
        job_id=job.id,
        backends=backends,
        batches=lines,
        batch_counts=counts,
        cost_usd=round(total_cost, 6),
        cost_is_estimate=True,
        failed=[
            FailedFile(
                asset_id=a.id,
                name=a.original_name,
                code=a.error_code,
                message=a.error_message,
                retryable=a.storage_key is not None,
            )
            for a in failed_rows
        ],
        failed_total=failed_total,
    )


def _batch_sizes(session: Session, *, job: Job) -> dict[uuid.UUID, int]:
    rows = session.execute(
        select(Asset.batch_id, func.count())
        .where(Asset.job_id == job.id, Asset.batch_id.is_not(None))
        .group_by(Asset.batch_id)
    )
    return {batch_id: int(n) for batch_id, n in rows if batch_id is not None}


def _count_failed(session: Session, *, job: Job) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Asset).where(Asset.job_id == job.id, Asset.status == AssetStatus.FAILED)
        )
        or 0
    )


def nsfw_score(payloads: dict[str, dict[str, Any]]) -> float | None:
    """An asset's NSFW score: the classifier's (the ``nsfw`` analyzer, or CLIP's ``nsfw_classifier_score``) when there
    is one, else CLIP's prompt-based score; None when no analyzer scored it."""
    candidates = (
        payloads.get("nsfw", {}).get("nsfw_score"),
        payloads.get("clip", {}).get("nsfw_classifier_score"),
        payloads.get("clip", {}).get("nsfw_score"),
    )
    for value in candidates:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def nsfw_scores(session: Session, *, tenant_id: uuid.UUID, asset_ids: list[uuid.UUID]) -> dict[uuid.UUID, float | None]:
    """The NSFW score (:func:`nsfw_score`) of each of a page of assets, read from the payloads in SQL."""
    if not asset_ids:
        return {}
    payload = Result.payload
    found: dict[uuid.UUID, dict[str, dict[str, Any]]] = {a: {} for a in asset_ids}
    for asset_id, analyzer, score, classifier in session.execute(
        select(Result.asset_id, Result.analyzer, payload["nsfw_score"], payload["nsfw_classifier_score"]).where(
            Result.tenant_id == tenant_id, Result.asset_id.in_(asset_ids), Result.analyzer.in_(NSFW_ANALYZERS)
        )
    ):
        found[asset_id][analyzer] = {"nsfw_score": score, "nsfw_classifier_score": classifier}
    return {asset_id: nsfw_score(payloads) for asset_id, payloads in found.items()}


def _summary_payloads(
    session: Session, *, tenant_id: uuid.UUID, asset_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, dict[str, Any]]]:
    """The few payload fields an export row needs, extracted in SQL (a video's per-frame detections never load).

    Values come back as JSON, uncast: a field of an unexpected type is dropped here instead of failing the query.
    """
    payload = Result.payload
    rows = session.execute(
        select(
            Result.asset_id,
            Result.analyzer,
            *(payload[name] for name in SUMMARY_FIELDS),
        ).where(Result.tenant_id == tenant_id, Result.asset_id.in_(asset_ids))
    )
    found: dict[uuid.UUID, dict[str, dict[str, Any]]] = {a: {} for a in asset_ids}
    for asset_id, analyzer, *values in rows:
        found[asset_id][analyzer] = {
            name: value
            for name, value in zip(SUMMARY_FIELDS, values, strict=True)
            if isinstance(value, SUMMARY_FIELDS[name]) and not isinstance(value, bool)
        }
    return found


def _rows_for(session: Session, *, tenant_id: uuid.UUID, assets: list[Asset]) -> list[ResultRow]:
    ids = [a.id for a in assets]
    payloads = _summary_payloads(session, tenant_id=tenant_id, asset_ids=ids)
    tags: dict[uuid.UUID, list[dict[str, float | str]]] = {a: [] for a in ids}
    for asset_id, tag, score in session.execute(
        select(ResultTag.asset_id, ResultTag.tag, ResultTag.score)
        .where(ResultTag.tenant_id == tenant_id, ResultTag.asset_id.in_(ids))
        .order_by(ResultTag.asset_id, ResultTag.score.desc(), ResultTag.tag)
    ):
        tags[asset_id].append({"tag": tag, "score": round(float(score), TAG_SCORE_DIGITS)})
    rows = []
    for asset in assets:
        found = payloads[asset.id]
        counts = found.get("objects", {}).get("counts")
        objects = (
            sum(int(v) for v in counts.values() if isinstance(v, int | float)) if isinstance(counts, dict) else None
        )
        persons = found.get("objects", {}).get("person_count")
        faces = found.get("faces", {}).get("face_count")
        nsfw = nsfw_score(found)
        rows.append(
            ResultRow(
                asset_id=str(asset.id),
                name=asset.original_name,
                status=str(asset.status),
                media_kind=asset.media_kind,
                tags=tags[asset.id],
                object_count=objects,
                face_count=None if faces is None else int(faces),
                person_count=None if persons is None else int(persons),
                transcript=found.get("transcribe", {}).get("text"),
                nsfw_score=None if nsfw is None else round(nsfw, 6),
                error_code=asset.error_code,
                error_message=asset.error_message,
            )
        )
    return rows


def iter_result_rows(
    session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, page_rows: int = EXPORT_PAGE_ROWS
) -> Iterator[ResultRow]:
    """Every asset of the job as an export row, in upload order, read ``page_rows`` at a time (never all at once).

    The job is checked first (another tenant's job raises NotFoundError before the first row).
    """
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    order = (Asset.created_at, Asset.id)
    last: tuple[datetime, uuid.UUID] | None = None
    while True:
        query = select(Asset).where(Asset.job_id == job.id, Asset.tenant_id == tenant_id)
        if last is not None:
            query = query.where(or_(Asset.created_at > last[0], and_(Asset.created_at == last[0], Asset.id > last[1])))
        page = list(session.scalars(query.order_by(*order).limit(page_rows)))
        if not page:
            return
        yield from _rows_for(session, tenant_id=tenant_id, assets=page)
        last = (page[-1].created_at, page[-1].id)
        for asset in page:
            session.expunge(asset)  # a long export holds one page of rows in memory, not the whole job
        if len(page) < page_rows:
            return


def csv_lines(rows: Iterable[ResultRow]) -> Iterator[str]:
    """The rows as CSV text, the header first, one line at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(row.as_csv())
        yield buffer.getvalue()


def json_chunks(job: dict[str, Any], rows: Iterable[ResultRow]) -> Iterator[str]:
    """A JSON document ``{"job": ..., "assets": [...]}`` written row by row."""
    import json

    yield '{"job": ' + json.dumps(job, default=str) + ', "assets": ['
    for number, row in enumerate(rows):
        yield ("," if number else "") + json.dumps(row.as_json(), ensure_ascii=False)
    yield "]}"
