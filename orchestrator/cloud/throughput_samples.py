"""Measured throughput of our rented workers: read their /v1/info and keep the samples the scheduler ranks with."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.cloud.readiness import measured_images_per_s, read_info
from orchestrator.db.models import GpuThroughputSample
from orchestrator.scheduler.throughput import ThroughputSample


def instance_source(instance_id: uuid.UUID) -> str:
    """The ``source`` of samples measured on one of our instances."""
    return f"instance:{instance_id}"


def load_samples(session: Session, *, now: datetime, max_age: timedelta) -> list[ThroughputSample]:
    """Samples measured within ``max_age`` before ``now``."""
    rows = session.execute(
        select(GpuThroughputSample.gpu_name, GpuThroughputSample.images_per_s, GpuThroughputSample.measured_at).where(
            GpuThroughputSample.measured_at >= now - max_age
        )
    )
    return [ThroughputSample(gpu_name, images_per_s, measured_at) for gpu_name, images_per_s, measured_at in rows]


def last_sampled(session: Session, sources: Iterable[str]) -> dict[str, datetime]:
    """When each of ``sources`` last recorded a sample (absent: never)."""
    wanted = list(sources)
    if not wanted:
        return {}
    rows = session.execute(
        select(GpuThroughputSample.source, func.max(GpuThroughputSample.measured_at))
        .where(GpuThroughputSample.source.in_(wanted))
        .group_by(GpuThroughputSample.source)
    )
    return {source: _aware(at) for source, at in rows}


def _aware(value: datetime) -> datetime:
    # Aggregates bypass the UTC column type on SQLite, which then returns naive values.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class WorkerToSample:
    """A ready instance whose worker may be asked for its measured throughput."""

    instance_id: uuid.UUID
    gpu_name: str
    url: str
    cert_pem: str
    token: str


def sample_workers(
    session_factory: sessionmaker[Session],
    workers: Iterable[WorkerToSample],
    *,
    now: datetime,
    interval: timedelta,
    timeout_s: float,
) -> list[ThroughputSample]:
    """Record a sample for each worker not sampled within ``interval``; returns what was recorded.

    A worker whose /v1/info cannot be read, or that reports no GPU figure, is skipped silently: sampling is
    best-effort and never affects readiness or the tick.
    """
    candidates = {instance_source(w.instance_id): w for w in workers}
    with session_factory.begin() as session:
        last = last_sampled(session, candidates)
    due: Mapping[str, WorkerToSample] = {
        source: w for source, w in candidates.items() if source not in last or now - last[source] >= interval
    }
    recorded: list[ThroughputSample] = []
    for source, worker in due.items():
        info = read_info(worker.url, cert_pem=worker.cert_pem, token=worker.token, timeout_s=timeout_s)
        figure = measured_images_per_s(info) if info is not None else None
        if figure is None:
            continue
        # The table is keyed by the provider's GPU model name (the offer's), not torch's device name.
        with session_factory.begin() as session:
            session.add(
                GpuThroughputSample(gpu_name=worker.gpu_name, images_per_s=figure, source=source, measured_at=now)
            )
        recorded.append(ThroughputSample(worker.gpu_name, figure, now))
    return recorded
