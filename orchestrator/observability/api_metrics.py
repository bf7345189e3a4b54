"""The API's metrics registry and its wiring into the app: one call from :func:`orchestrator.api.main.create_app`.

Each app gets its own registry (process, platform and GC metrics, the HTTP middleware's counters, and the database
collector), so several apps in one process (tests) never clash over metric names.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from orchestrator.clock import utcnow
from orchestrator.db.session import get_sessionmaker
from orchestrator.logs import install_api_logging
from orchestrator.observability.db_collector import DatabaseCollector
from orchestrator.observability.http_metrics import HttpMetrics, ObservabilityMiddleware
from orchestrator.observability.ops_snapshot import OpsSnapshot, read_snapshot
from orchestrator.settings import Settings


@dataclass(frozen=True)
class ApiMetrics:
    """What ``GET /metrics`` exports and the middleware records into."""

    registry: CollectorRegistry
    http: HttpMetrics


def read_current_snapshot() -> OpsSnapshot:
    """A snapshot from the configured database, in a session that writes nothing."""
    with get_sessionmaker()() as session:
        try:
            return read_snapshot(session, now=utcnow())
        finally:
            session.rollback()


def create_api_metrics() -> ApiMetrics:
    """A fresh registry with the process, HTTP and database metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(DatabaseCollector(read_current_snapshot))
    return ApiMetrics(registry=registry, http=HttpMetrics(registry))


def install_observability(app: FastAPI, settings: Settings) -> None:
    """JSON logs when configured, the request-id and HTTP metrics middleware, and the ``/metrics`` route."""
    from orchestrator.api.routes.metrics import router

    install_api_logging(settings)
    metrics = create_api_metrics()
    app.state.metrics = metrics
    app.add_middleware(ObservabilityMiddleware, metrics=metrics.http)
    app.include_router(router)
