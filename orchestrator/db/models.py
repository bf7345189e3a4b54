"""SQLAlchemy 2 models. The database row is the truth about every job, asset and batch; Redis only carries work."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from orchestrator.clock import utcnow
from orchestrator.enums import AssetStatus, BatchStatus, InstanceStatus, JobStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC and always returns timezone-aware values, also on SQLite (which keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use orchestrator.clock.utcnow()")
        return value.astimezone(UTC) if dialect.name != "sqlite" else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with stable constraint names, so migrations can address them on every database."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: UTCDateTime}


def _new_id() -> uuid.UUID:
    return uuid.uuid4()


class Tenant(Base):
    """A customer of the deployment; every other row belongs to exactly one tenant."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=_new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A tenant's API key. Only its sha256 is stored; the key itself is shown once when issued."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=_new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)

    tenant: Mapped[Tenant] = relationship()


class User(Base):
    """A person who signs in to the dashboard. Members belong to a tenant; operators may have none.

    Only a scrypt verifier of the password is stored (``orchestrator.accounts``).
    """

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=_new_id)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(16), default="member")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)


class WebSession(Base):
    """A signed-in browser. The cookie holds a random token; only its sha256 is stored, so a database leak signs
    nobody in. Signing out deletes the row, which ends the session at once."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_expires_at", "expires_at"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # Set when the browser signed in with an API key (revoking the key ends the session) or an admin token.
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(100))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class Job(Base):
    """A set of files submitted together, analyzed with one set of analyzer options."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=_new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[JobStatus] = mapped_column(String(16), default=JobStatus.OPEN)
    analyzers: Mapped[list[str]] = mapped_column(default=list)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Analyzers that could not run for this job, with the message telling the user how to enable them.
    notices: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sealed_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Asset(Base):
    """One submitted file. ``original_name`` is display metadata only; the bytes live under ``storage_key``."""

    __tablename__ = "assets"
    __table_args__ = (
        Index(
            "uq_assets_job_sha256",
            "job_id",
            "sha256",
            unique=True,
            sqlite_where=text("storage_key IS NOT NULL"),
            postgresql_where=text("storage_key IS NOT NULL"),
        ),
        Index("ix_assets_tenant_sha256", "tenant_id", "sha256"),
        Index("ix_assets_job_status", "job_id", "status"),
        # The dashboard's gallery pages through a tenant's assets newest first.
        Index("ix_assets_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=_new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"), index=True)
    sha256: Mapped[str | None] = mapped_column(String(64))
    media_kind: Mapped[str | None] = mapped_column(String(16))
    mime_type: Mapped[str | None] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    storage_key: Mapped[str | None] = mapped_column(String(300))
    thumbnail_key: Mapped[str | None] = mapped_column(String(300))
    original_name: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[AssetStatus] = mapped_column(String(16), default=AssetStatus.UPLOADED)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column(Float)
    # 64-bit perceptual hash of the picture (a video's first keyframe), 16 hex digits, for near-duplicates.
    phash: Mapped[str | None] = mapped_column(String(16), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Batch(Base):
    """A group of assets analyzed together. Claimed with a conditional UPDATE that sets a lease; ``attempts`` fences
    out a worker whose lease expired and was taken over."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_status_lease", "status", "lease_expires_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=_new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    status: Mapped[BatchStatus] = mapped_column(String(16), default=BatchStatus.PENDING)
    analyzers: Mapped[list[str]] = mapped_column(default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    backend: Mapped[str | None] = mapped_column(String(32))
    # The rented instance running the batch right now, so a vanished or failed instance's batches are re-queued at
    # once instead of after their lease. No foreign key: instance rows are never deleted, and on SQLite one would
    # make adding this column rebuild the table.
    instance_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True, default=None)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Result(Base):
    """One analyzer's full output for one asset; upserted, so a redelivered batch changes nothing."""

    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("asset_id", "analyzer"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=_new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    asset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    analyzer: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    batch_attempt: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ResultTag(Base):
    """The queryable part of a result: one tag with its score, searchable across a tenant's assets."""

    __tablename__ = "result_tags"
    __table_args__ = (
        UniqueConstraint("asset_id", "analyzer", "tag"),
        Index("ix_result_tags_tenant_tag", "tenant_id", "tag"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    asset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    analyzer: Mapped[str] = mapped_column(String(32))
    tag: Mapped[str] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float)


class Embedding(Base):
    """An asset's embedding from one analyzer, float32 little-endian bytes, for similarity search."""

    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("asset_id", "analyzer"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    asset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    analyzer: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(String(200))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class TenantBudget(Base):
    """A tenant's scheduling policy (overrides of the defaults, as JSON) and its money: the state of the pure
    ledger's account (integer micro-dollars), which ``orchestrator.budgets`` loads under a lock and stores back."""

    __tablename__ = "tenant_budgets"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    day: Mapped[date] = mapped_column(Date)
    month: Mapped[date] = mapped_column(Date)
    day_spent_musd: Mapped[int] = mapped_column(BigInteger, default=0)
    month_spent_musd: Mapped[int] = mapped_column(BigInteger, default=0)
    total_spent_musd: Mapped[int] = mapped_column(BigInteger, default=0)
    settled_musd: Mapped[int] = mapped_column(BigInteger, default=0)
    # Bumped by every writer first: the row lock (PostgreSQL) or write lock (SQLite) that serializes spending.
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class BudgetHold(Base):
    """The reservation of one live rented instance and what it has been charged so far."""

    __tablename__ = "budget_holds"

    instance_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    price_per_h_musd: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column()
    accrued_until: Mapped[datetime] = mapped_column()
    charged_musd: Mapped[int] = mapped_column(BigInteger, default=0)
    left_musd: Mapped[int] = mapped_column(BigInteger, default=0)


class LedgerEntry(Base):
    """An append-only record of every money movement (reserve, accrue, settle), for audits and bills."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_tenant_at", "tenant_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    instance_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    amount_musd: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    note: Mapped[str] = mapped_column(String(300), default="")


class Instance(Base):
    """One rented GPU instance, written (with its reservation) before the provider's create call.

    ``id`` is also the budget hold's key and part of the provider label, so a restart finds the instance again.
    ``worker_token`` and ``tls_cert_pem`` open and authenticate only this instance; its TLS key is never stored.
    """

    __tablename__ = "instances"
    __table_args__ = (Index("ix_instances_state", "state"), Index("ix_instances_tenant_state", "tenant_id", "state"))

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=_new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(32))
    provider_instance_id: Mapped[str | None] = mapped_column(String(64), index=True)
    label: Mapped[str] = mapped_column(String(120), unique=True)
    offer_id: Mapped[str] = mapped_column(String(64))
    machine_id: Mapped[int] = mapped_column(BigInteger)
    gpu_name: Mapped[str] = mapped_column(String(100))
    price_per_h_musd: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[InstanceStatus] = mapped_column(String(16), default=InstanceStatus.REQUESTED)
    status_msg: Mapped[str] = mapped_column(Text, default="")
    worker_url: Mapped[str | None] = mapped_column(String(300))
    worker_token: Mapped[str] = mapped_column(String(100))
    tls_cert_pem: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(default=None)
    last_busy_at: Mapped[datetime | None] = mapped_column(default=None)
    destroyed_at: Mapped[datetime | None] = mapped_column(default=None)
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    destroy_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    logs: Mapped[str | None] = mapped_column(Text)

    @property
    def price_per_h_usd(self) -> float:
        """USD per hour, storage included."""
        return self.price_per_h_musd / 1_000_000


class ExcludedMachine(Base):
    """A provider machine that failed one of our instances; offers on it are never rented again."""

    __tablename__ = "excluded_machines"

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    machine_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    reason: Mapped[str] = mapped_column(String(300), default="")
    instance_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    excluded_at: Mapped[datetime] = mapped_column(default=utcnow)


class TenantCloudState(Base):
    """What the last scheduler tick said about a tenant and the cloud (see ``orchestrator.scheduler.tenant_state``):
    the tier its batches fall back to now, or that it is paused, with the line shown to the user."""

    __tablename__ = "tenant_cloud_states"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    fallback_tier: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    blocked: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class GpuThroughputSample(Base):
    """One measured full-pipeline images/s of a GPU model, read from a rented worker's ``/v1/info``.

    The scheduler replaces the estimates of ``config/gpu_throughput.toml`` by the median of recent samples
    (``orchestrator.scheduler.throughput.current_table``). ``source`` says where it came from (``instance:<id>``).
    """

    __tablename__ = "gpu_throughput_samples"
    __table_args__ = (
        Index("ix_gpu_throughput_samples_measured_at", "measured_at"),
        Index("ix_gpu_throughput_samples_source_measured_at", "source", "measured_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    gpu_name: Mapped[str] = mapped_column(String(100))
    images_per_s: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(120))
    measured_at: Mapped[datetime] = mapped_column(default=utcnow)


class TenantSettingsRow(Base):
    """A tenant's analysis settings (``orchestrator.tenant_settings``): the analyzers new jobs run by default, the
    tag vocabulary (None: the default vocabulary) and the NSFW threshold. No row means the defaults."""

    __tablename__ = "tenant_settings"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    analyzers: Mapped[list[str]] = mapped_column(default=list)
    vocabulary: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), default=None)
    nsfw_threshold: Mapped[float] = mapped_column(Float, default=0.5)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SchedulerEvent(Base):
    """One scheduler decision about a tenant (``orchestrator.scheduler_events``): why it rented, destroyed, warned,
    fell back, or did not rent while work waited. Written only when it differs from the tenant's last event."""

    __tablename__ = "scheduler_events"
    __table_args__ = (
        Index("ix_scheduler_events_tenant_at", "tenant_id", "at"),
        Index("ix_scheduler_events_at", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    instance_id: Mapped[str | None] = mapped_column(String(64), default=None)


class SearchDocument(Base):
    """The text an asset is found by (tag words, transcript, file name), kept in step with its results.

    Full-text indexes live outside the model: on PostgreSQL an expression GIN index on
    ``to_tsvector('english', body)``; on SQLite the FTS5 table ``search_fts`` whose rowid is ``id``, kept in sync by
    triggers. Both are created by migration 0009.
    """

    __tablename__ = "search_documents"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    asset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), unique=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    body: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Person(Base):
    """A cluster of faces of one tenant that the user may name; merged and split by hand, grown automatically."""

    __tablename__ = "people"
    __table_args__ = (Index("ix_people_tenant_name", "tenant_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=_new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    # L2-normalised mean of the member faces' embeddings (float32 bytes), for assigning new faces.
    centroid: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    face_count: Mapped[int] = mapped_column(Integer, default=0)
    cover_face_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Face(Base):
    """One detected face of an asset (a row of the faces result), with its embedding and the person it belongs to.

    ``assigned_by`` is ``auto`` (clustering) or ``user`` (a merge, split or move by hand, which clustering keeps).
    """

    __tablename__ = "faces"
    __table_args__ = (
        UniqueConstraint("asset_id", "face_index"),
        Index("ix_faces_tenant_person", "tenant_id", "person_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    asset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    face_index: Mapped[int] = mapped_column(Integer)
    timestamp_s: Mapped[float | None] = mapped_column(Float, default=None)
    box: Mapped[list[float]] = mapped_column(JSON, default=list)
    probability: Mapped[float] = mapped_column(Float, default=0.0)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    person_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("people.id", ondelete="SET NULL"), default=None)
    assigned_by: Mapped[str | None] = mapped_column(String(8), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MetadataWrite(Base):
    """One write-back of tags (and face regions) into original files' XMP, which can be undone as a whole."""

    __tablename__ = "metadata_writes"
    __table_args__ = (Index("ix_metadata_writes_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=_new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    mode: Mapped[str] = mapped_column(String(16))
    scope: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="running")
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    undone_at: Mapped[datetime | None] = mapped_column(default=None)


class MetadataWriteItem(Base):
    """What one write-back did to one asset: the stored file before and after, so undo can put the old one back."""

    __tablename__ = "metadata_write_items"
    __table_args__ = (UniqueConstraint("write_id", "asset_id"), Index("ix_metadata_write_items_asset", "asset_id"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    write_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("metadata_writes.id", ondelete="CASCADE"))
    asset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    previous_storage_key: Mapped[str | None] = mapped_column(String(300), default=None)
    previous_size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    new_storage_key: Mapped[str | None] = mapped_column(String(300), default=None)
    new_size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    new_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    written: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class DuplicateDismissal(Base):
    """A group of near-duplicates the user reviewed and marked as not duplicates; ``group_key`` hashes its members,
    so the group shows again if a new member joins it."""

    __tablename__ = "duplicate_dismissals"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    group_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
