"""Request ids and HTTP metrics for the API, as one small ASGI middleware.

Every request runs inside ``log_context(request_id=...)``: the caller's ``X-Request-ID`` when it is a sane token,
otherwise a fresh one, echoed in the response's ``X-Request-ID``. Requests are counted and timed per route
*template* (``/api/v1/jobs/{job_id}``), never per raw path, so ids in paths cannot grow the label set; paths that
match no route share the label ``unmatched``. These counters live in the process that served the request.
"""

from __future__ import annotations

import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.logs import log_context

REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
UNMATCHED_ROUTE = "unmatched"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class HttpMetrics:
    """The API's request counter and latency histogram, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "orch_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "orch_http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of the body), by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )

    def observe(self, *, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID when it is a short token of safe characters, otherwise a new random id."""
    for name, value in headers:
        if name.lower() == REQUEST_ID_HEADER:
            candidate = value.decode("latin-1").strip()
            if REQUEST_ID_PATTERN.match(candidate):
                return candidate
    return uuid.uuid4().hex


def method_label(method: str) -> str:
    """The method as a label; anything unusual is ``other``, so a client cannot invent label values."""
    return method if method in KNOWN_METHODS else "other"


def route_template(scope: Scope) -> str:
    """The path with each path parameter's value put back as ``{name}`` (``/api/v1/jobs/{job_id}``);
    ``unmatched`` when no route took the request. Rebuilt from the path because a route nested in an included
    router knows only its own part of the template."""
    if scope.get("route") is None:
        return UNMATCHED_ROUTE
    path = str(scope.get("path", ""))
    params = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    for text, name in list(params.items()):
        if "/" in text and path.endswith("/" + text):  # a {name:path} parameter spans several segments
            path = path[: -len(text)] + "{" + name + "}"
            del params[text]
    return "/".join("{" + params[segment] + "}" if segment in params else segment for segment in path.split("/"))


class ObservabilityMiddleware:
    """Sets the request id for logs and the response, and counts and times each HTTP request."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request with its id in the log context; record its status and duration afterwards."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(list(scope.get("headers", [])))
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, request_id.encode())]}
            await send(message)

        try:
            with log_context(request_id=request_id):
                await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.observe(
                method=method_label(str(scope.get("method", ""))),
                route=route_template(scope),
                status=status,
                seconds=time.perf_counter() - started,
            )
