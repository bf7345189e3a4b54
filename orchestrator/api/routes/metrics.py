"""``GET /metrics``: the Prometheus exposition of the API process and the database's figures, for operators only
(see :mod:`orchestrator.observability.access` for who may read it). Not part of the public OpenAPI schema."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.observability.access import PROXY_HEADERS, MetricsRefusal, metrics_refusal

router = APIRouter(tags=["metrics"])

REFUSAL_MESSAGES = {
    MetricsRefusal.TOKEN: "send the metrics token as 'Authorization: Bearer <token>'",
    MetricsRefusal.NOT_PRIVATE: "metrics are served to loopback and private addresses only; set ORCH_METRICS_TOKEN "
    "to scrape from elsewhere",
}


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """The metrics in Prometheus text format, or 401/403 with the reason."""
    refusal = metrics_refusal(
        token=request.app.state.settings.metrics_token,
        authorization=request.headers.get("authorization"),
        peer_host=request.client.host if request.client else None,
        proxied=any(name in request.headers for name in PROXY_HEADERS),
    )
    if refusal is not None:
        status = 401 if refusal is MetricsRefusal.TOKEN else 403
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        body = {"detail": {"code": f"metrics_{refusal.value}", "message": REFUSAL_MESSAGES[refusal]}}
        return JSONResponse(body, status_code=status, headers=headers)
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
